// fmrl_sdk/ids.py's id rule in C++, shared by the library (fmrl_add_items, fmrl_observe) and fmrl_replay
// (check_fields): an id is not empty, holds no NUL, is at most FMRL_MAX_ID_BYTES bytes and is UTF-8 text. Header
// only: fmrl_replay cannot call the library's internals (it hides its symbols).
#pragma once

#include <cstdint>
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

// Why the bytes `id` are not UTF-8 text: "" when they are; ids.py's words for a UTF-16 surrogate (U+D800..DFFF
// encoded in 3 bytes, as Python's "surrogatepass" or Java's modified UTF-8 writes one); "is not UTF-8 text" for
// any other malformed sequence (Python cannot hold one: its ids are text).
inline std::string utf8_problem(std::string_view id) {
  bool surrogate = false;
  for (size_t i = 0; i < id.size();) {
    const unsigned char c = static_cast<unsigned char>(id[i]);
    const size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (n == 0 || i + n > id.size()) return "is not UTF-8 text";
    uint32_t code = n == 1 ? c : c & (0x7F >> n);
    for (size_t k = 1; k < n; ++k) {
      const unsigned char next = static_cast<unsigned char>(id[i + k]);
      if ((next & 0xC0) != 0x80) return "is not UTF-8 text";
      code = (code << 6) | (next & 0x3F);
    }
    static const uint32_t kLeast[] = {0, 0, 0x80, 0x800, 0x10000};   // overlong forms are not UTF-8
    if (code < kLeast[n] || code > 0x10FFFF) return "is not UTF-8 text";
    surrogate = surrogate || (code >= 0xD800 && code <= 0xDFFF);
    i += n;
  }
  return surrogate ? "holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text" : "";
}

// Why the UTF-8 string `id` (a string's bytes, or an integer's digits) is not an id, in ids.py's words and
// order: a phrase to follow the id's name ("'item' " + phrase); "" when it is an id.
inline std::string id_problem(std::string_view id) {
  if (id.empty()) return "must not be empty";
  if (id.find('\0') != std::string_view::npos) return "must not contain NUL characters";
  if (id.size() > FMRL_MAX_ID_BYTES)
    return "is longer than " + thousands(FMRL_MAX_ID_BYTES) + " bytes (the most an id may hold)";
  return utf8_problem(id);
}

}  // namespace fmrl
