// fmrl_sdk/ids.py's id rule in C++, shared by the library (fmrl_add_items, fmrl_observe) and fmrl_replay
// (check_fields): an id is not empty, holds no NUL and is at most FMRL_MAX_ID_BYTES bytes of UTF-8. Header
// only: fmrl_replay cannot call the library's internals (it hides its symbols).
#pragma once

#include <string>
#include <string_view>

#include "fmrl_runtime.h"

namespace fmrl {

inline std::string thousands(long long n) {  // Python's f"{n:,}"
  std::string digits = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (n < 0 ? "-" : "") + out;
}

// Why the UTF-8 string `id` (a string's bytes, or an integer's digits) is not an id, in ids.py's words: a
// phrase to follow the id's name ("'item' " + phrase); "" when it is an id.
inline std::string id_problem(std::string_view id) {
  if (id.empty()) return "must not be empty";
  if (id.find('\0') != std::string_view::npos) return "must not contain NUL characters";
  if (id.size() > FMRL_MAX_ID_BYTES)
    return "is longer than " + thousands(FMRL_MAX_ID_BYTES) + " bytes (the most an id may hold)";
  return "";
}

}  // namespace fmrl
