// C++ convenience over the C ABI (header only): RAII handles, exceptions carrying fmrl_last_error().
//
//   fmrl::check_version();  // the loaded library can serve this header
//   fmrl::Recommender rec("bundles/phone-lowmem");
//   fmrl::Session alice = rec.restore_or_new(saved_bytes);
//   alice.observe("B0030HKJ8I");
//   for (const auto& [id, score] : alice.recommend(10, /*exclude_seen=*/true)) ...
//   std::vector<uint8_t> bytes = alice.to_bytes();
//
// Strings (bundle paths, item ids) are UTF-8. A std::string holding a NUL character is refused with
// RuntimeError(FMRL_ERR_ARGUMENT) before the C library sees it (fmrl_runtime.h, FMRL_MAX_ID_BYTES).
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fmrl_runtime.h"

namespace fmrl {

struct RuntimeError : std::runtime_error {
  fmrl_status status;
  RuntimeError(fmrl_status s, const char* what) : std::runtime_error(what), status(s) {}
};

inline void check(fmrl_status status) {
  if (status != FMRL_OK) throw RuntimeError(status, fmrl_last_error());
}

// `text` as the C ABI takes it, NUL-terminated. The library would read a std::string holding NUL cut short
// ("i\0" "1" as the id "i", a path as its prefix): RuntimeError(FMRL_ERR_ARGUMENT) naming it (`what`).
inline const char* c_string(const std::string& text, const char* what) {
  if (text.find('\0') != std::string::npos)
    throw RuntimeError(FMRL_ERR_ARGUMENT, (std::string(what) + " must not contain NUL characters").c_str());
  return text.c_str();
}

// Throws std::runtime_error unless FMRL_CHECK_VERSION() holds (same major version, library not older).
inline void check_version() {
  if (!FMRL_CHECK_VERSION())
    throw std::runtime_error(std::string("fmrl_runtime ") + fmrl_version() +
                             " cannot serve a caller compiled with fmrl_runtime.h " FMRL_VERSION_STRING);
}

class Session;

// One opened bundle; share it between threads (see fmrl_runtime.h).
class Recommender {
 public:
  // a bundle directory or a one-file NAME.fmrlb
  explicit Recommender(const std::string& bundle_path, const fmrl_open_options* options = nullptr) {
    fmrl_recommender* rec = nullptr;
    check(fmrl_open(c_string(bundle_path, "fmrl::Recommender: bundle_path"), options, &rec));
    rec_.reset(rec);
  }
  // a one-file bundle at [offset, offset + length) of the open file fd (an Android asset)
  static Recommender from_fd(int fd, uint64_t offset, uint64_t length, const fmrl_open_options* options = nullptr) {
    fmrl_recommender* rec = nullptr;
    check(fmrl_open_fd(fd, offset, length, options, &rec));
    return Recommender(rec);
  }
  // a one-file bundle in memory: keep the buffer alive and unchanged while the Recommender lives
  static Recommender from_buffer(const void* data, size_t size, const fmrl_open_options* options = nullptr) {
    fmrl_recommender* rec = nullptr;
    check(fmrl_open_buffer(data, size, options, &rec));
    return Recommender(rec);
  }
  fmrl_recommender* get() const { return rec_.get(); }
  int granularity() const { return fmrl_granularity(get()); }
  size_t state_bytes() const { return fmrl_state_bytes(get()); }
  inline Session new_session() const;
  inline Session restore(const std::vector<uint8_t>& bytes) const;
  // the saved session, or a new one when there is none or it is refused (another bundle, corrupt...)
  inline Session restore_or_new(const std::vector<uint8_t>& bytes) const;
  // vectors: row-major [ids.size(), dims]
  size_t add_items(const std::vector<std::string>& ids, const std::vector<float>& vectors, size_t dims) {
    if (vectors.size() != ids.size() * dims)
      throw RuntimeError(FMRL_ERR_ARGUMENT, ("add_items: expected " + std::to_string(ids.size()) + " x " +
                                             std::to_string(dims) + " floats, got " + std::to_string(vectors.size()))
                                                .c_str());
    std::vector<const char*> names;
    for (size_t i = 0; i < ids.size(); ++i)
      names.push_back(c_string(ids[i], ("add_items: ids[" + std::to_string(i) + "]").c_str()));
    size_t added = 0;
    check(fmrl_add_items(get(), names.data(), names.size(), vectors.data(), dims, &added));
    return added;
  }

 private:
  explicit Recommender(fmrl_recommender* rec) { rec_.reset(rec); }
  struct Close {
    void operator()(fmrl_recommender* rec) const { fmrl_close(rec); }
  };
  std::unique_ptr<fmrl_recommender, Close> rec_;
};

// One user's state; not thread-safe. Must not outlive its Recommender.
class Session {
 public:
  Session(fmrl_recommender* rec, fmrl_session* session) : rec_(rec), session_(session) {}
  bool observe(const std::string& item_id) {
    int advanced = 0;
    check(fmrl_observe(rec_, session_.get(), c_string(item_id, "observe: item id"), &advanced));
    return advanced != 0;
  }
  std::vector<std::pair<std::string, float>> recommend(int k = 10, bool exclude_seen = false) const {
    std::vector<const char*> ids(k);
    std::vector<float> scores(k);
    size_t count = static_cast<size_t>(k);
    check(fmrl_recommend(rec_, session_.get(), k, exclude_seen ? 1 : 0, ids.data(), scores.data(), nullptr, &count));
    std::vector<std::pair<std::string, float>> out;
    for (size_t r = 0; r < count; ++r) out.emplace_back(ids[r], scores[r]);
    return out;
  }
  std::vector<uint8_t> to_bytes() const {
    std::vector<uint8_t> bytes(fmrl_state_bytes(rec_));
    size_t size = 0;
    check(fmrl_session_to_bytes(rec_, session_.get(), nullptr, 0, bytes.data(), bytes.size(), &size));
    return bytes;
  }

 private:
  struct Free {
    void operator()(fmrl_session* s) const { fmrl_session_free(s); }
  };
  fmrl_recommender* rec_;
  std::unique_ptr<fmrl_session, Free> session_;
};

inline Session Recommender::new_session() const {
  fmrl_session* s = nullptr;
  check(fmrl_session_new(get(), &s));
  return Session(get(), s);
}

inline Session Recommender::restore(const std::vector<uint8_t>& bytes) const {
  fmrl_session* s = nullptr;
  check(fmrl_session_restore(get(), bytes.data(), bytes.size(), nullptr, 0, &s));
  return Session(get(), s);
}

inline Session Recommender::restore_or_new(const std::vector<uint8_t>& bytes) const {
  fmrl_session* s = nullptr;
  if (!bytes.empty() && fmrl_session_restore(get(), bytes.data(), bytes.size(), nullptr, 0, &s) == FMRL_OK)
    return Session(get(), s);
  return new_session();
}

}  // namespace fmrl
