// Internals of fmrl_runtime (not installed). Mirrors fmrl_sdk/runtime/{bundle,engine,recommender,seen}.py;
// the error messages are the Python runtime's, word for word where the inputs allow.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fmrl_runtime.h"
#include "nlohmann_json/json.hpp"
#include "paths.hpp"

namespace fmrl {

using Json = nlohmann::ordered_json;  // keeps the manifest's key order, as Python's dict does

struct Error : std::runtime_error {
  fmrl_status status;
  Error(fmrl_status s, const std::string& what) : std::runtime_error(what), status(s) {}
};

// The log hook (fmrl_set_log_callback); check logging() before building a message.
bool logging();
void log_line(fmrl_log_level level, const std::string& message);

// A file's bytes: an aligned buffer of our own (64 bytes: ExecuTorch reads the program's constants in
// place), a read-only memory mapping, the caller's buffer (fmrl_open_buffer), or a part of another Blob
// (a one-file bundle's part, which keeps the whole alive).
class Blob {
 public:
  explicit Blob(size_t size);                                            // owned, uninitialised
  Blob(std::shared_ptr<const Blob> whole, size_t offset, size_t size);   // a part of `whole`
  static std::shared_ptr<Blob> borrow(const void* data, size_t size);    // not copied, not freed
  // [offset, offset + size) of the open file fd, mapped read-only (the containing pages); the fd may be
  // closed afterwards. Throws Error(FMRL_ERR_BUNDLE) naming `where` when mmap fails.
  static std::shared_ptr<Blob> map(int fd, uint64_t offset, uint64_t size, const std::string& where);
  ~Blob();
  Blob(const Blob&) = delete;
  Blob& operator=(const Blob&) = delete;
  uint8_t* data() { return data_; }  // write only into an owned Blob
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  Blob() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  void* owned_ = nullptr;                 // aligned_alloc
  void* mapped_ = nullptr;                // mmap
  size_t mapped_size_ = 0;
  std::shared_ptr<const Blob> whole_;     // a part keeps its whole alive
};

// Python-compatible renderings used in messages (bundle.cpp), so that both runtimes word them alike.
std::string py_repr(const Json& value);              // repr() of a decoded JSON value
std::string py_str(const Json& value);               // str() of it
std::string py_repr_str(std::string_view text);      // repr() of a str
uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc = 0);  // zlib.crc32 (runtime.cpp)

// The item table of a bundle (formats 2 and 3): vector of internal index i (1..N) = row i - 1.
struct ItemTable {
  std::shared_ptr<const Blob> file, scales_file;  // keep the bytes alive
  const uint8_t* rows = nullptr;                  // first row
  const float* scales = nullptr;                  // int8 only: per-row scale (may be unaligned: memcpy)
  bool int8 = false;
  int64_t count = 0;
  int32_t cols = 0;
  void row(int64_t index, float* out) const;      // index 1..count -> out[cols] (float32)
};

struct Bundle {
  std::string path;                  // as Python prints it
  Json manifest;
  std::vector<std::string> item_ids; // internal index i -> item_ids[i - 1]
  std::vector<float> cold_scores, cold_hidden;
  std::vector<int64_t> cold_indices;
  std::shared_ptr<const Blob> program;
  ItemTable table;
  uint8_t fingerprint[16];
  int32_t granularity = 0, num_blocks = 0, k_max = 0, rows = 0;
  std::string method = "forward", profile;
};

// load_bundle of fmrl_sdk/runtime/bundle.py: a bundle directory or a one-file .fmrlb (memory-mapped).
Bundle load_bundle(const std::string& path, bool check_executorch_version);
// load_bundle_fd: the one-file bundle at [offset, offset + length) of the open file fd (mapped).
Bundle load_bundle_fd(int fd, uint64_t offset, uint64_t length, bool check_executorch_version);
// load_bundle_bytes: the one-file bundle in the caller's buffer, used in place when 64-byte aligned (the
// caller keeps it alive and unchanged until fmrl_close), else copied once.
Bundle load_bundle_buffer(const void* data, size_t size, bool check_executorch_version);

// The top k of a program's scores (the program returns all N; the runtime selects, issue 28 part 4).
struct Ranked {
  float score;
  int32_t position;
};

// a ranks above b: higher score first, equal scores the lower position first, NaN below every number
// (NaN and -inf by position). The order of select_topk in fmrl_sdk/runtime/engine.py: both runtimes return
// the same ids in the same order.
inline bool ranks_above(const Ranked& a, const Ranked& b) {
  const float x = std::isnan(a.score) ? -INFINITY : a.score, y = std::isnan(b.score) ? -INFINITY : b.score;
  return x > y || (x == y && a.position < b.position);
}

struct TopkScratch {
  std::vector<float> maxima, order;
  std::vector<Ranked> candidates;
};

// max(scores[begin, end)) over the numbers (NaN never wins; -inf when there are none): 16 independent lanes.
inline float block_max(const float* scores, int64_t begin, int64_t end) {
  constexpr int kLanes = 16;
  float lane[kLanes];
  for (float& l : lane) l = -INFINITY;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] = scores[i + l] > lane[l] ? scores[i + l] : lane[l];
  float m = -INFINITY;
  for (; i < end; ++i) m = scores[i] > m ? scores[i] : m;
  for (float l : lane) m = l > m ? l : m;
  return m;
}

// scores[0, n) -> the top min(k, n), best first: out_scores, out_positions (0-based). `scratch` is reused
// between calls. Exact for any threshold t > -inf: when at least k scores are >= t (the candidates; NaN never
// is), they rank above every other score, so the top k of the candidates is the top k; otherwise, or when t
// is -inf (NaN ties with -inf), every position is ranked. Fast because of how t is chosen, in two reading
// passes: (1) the maxima of G >= k blocks of consecutive scores, whose k-th largest t is at most the k-th
// largest score (k distinct scores reach it), so (2) the candidates, read from the blocks whose maximum is
// >= t, are about 1% of the scores (N = 12,101, k = 100).
inline void select_topk(const float* scores, int64_t n, int32_t k, TopkScratch& scratch, float* out_scores,
                        int32_t* out_positions) {
  const int64_t count = std::min<int64_t>(k, n);
  if (count < 1) return;
  const int64_t block = std::max<int64_t>(1, n / (2 * count)), blocks = (n + block - 1) / block;  // blocks >= count
  auto &maxima = scratch.maxima, &order = scratch.order;
  maxima.resize(static_cast<size_t>(blocks));
  for (int64_t b = 0; b < blocks; ++b) maxima[b] = block_max(scores, b * block, std::min(n, (b + 1) * block));
  order.assign(maxima.begin(), maxima.end());
  std::nth_element(order.begin(), order.begin() + (count - 1), order.end(), std::greater<float>());
  const float threshold = order[count - 1];
  auto& candidates = scratch.candidates;
  candidates.clear();
  constexpr int64_t kChunk = 16;
  // t = -inf would take -inf scores and leave out NaN, which ranks with them (by position): rank every position
  for (int64_t b = 0; threshold > -INFINITY && b < blocks; ++b) {
    if (!(maxima[b] >= threshold)) continue;  // no score of the block reaches the threshold
    const int64_t end = std::min(n, (b + 1) * block);
    for (int64_t at = b * block; at < end; at += kChunk) {
      const int64_t stop = std::min(end, at + kChunk);
      if (stop - at == kChunk) {  // most chunks hold no candidate: one vectorised test
        int any = 0;
        for (int64_t l = 0; l < kChunk; ++l) any |= scores[at + l] >= threshold;
        if (!any) continue;
      }
      for (int64_t i = at; i < stop; ++i)
        if (scores[i] >= threshold) candidates.push_back({scores[i], static_cast<int32_t>(i)});
    }
  }
  if (static_cast<int64_t>(candidates.size()) >= count) {  // candidates are numbers: no NaN to rank
    std::partial_sort(candidates.begin(), candidates.begin() + count, candidates.end(),
                      [](const Ranked& a, const Ranked& b) {
                        return a.score > b.score || (a.score == b.score && a.position < b.position);
                      });
  } else {  // NaN scores: rank every position
    candidates.clear();
    for (int64_t i = 0; i < n; ++i) candidates.push_back({scores[i], static_cast<int32_t>(i)});
    std::partial_sort(candidates.begin(), candidates.begin() + count, candidates.end(), ranks_above);
  }
  for (int64_t r = 0; r < count; ++r) out_scores[r] = candidates[r].score, out_positions[r] = candidates[r].position;
}

// One ExecuTorch method of the bundle's program. step() is serialised by a mutex (one method owns one
// set of planned buffers), as PteEngine does in Python.
class Engine {
 public:
  Engine(std::shared_ptr<const Blob> program, const std::string& method, int32_t rows, int32_t size,
         int32_t k_max, int64_t num_items);
  ~Engine();
  // x [size], state [rows * size] -> scores [k_max], indices [k_max] (1..N, as int32), new_state, hidden [size].
  // The program returns the scores of all N items (format 3); the top k_max is select_topk's. Outputs may
  // alias the state input (copied in before the call).
  void step(const float* x, const float* state, float* scores, int32_t* indices, float* new_state, float* hidden);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// An open recommender's share of ExecuTorch's process-wide thread pool (fmrl_open_options.threads). The
// pool is resized to `threads` (> 0) only while no other share exists: XNNPACK keeps a pointer to the pool
// a program was loaded with, which a resize frees. Otherwise the value is ignored with a warning.
class PoolShare {
 public:
  explicit PoolShare(int threads);
  ~PoolShare();
  PoolShare(const PoolShare&) = delete;
  PoolShare& operator=(const PoolShare&) = delete;
  static int thread_count();  // the pool's threads now
};

// Immutable snapshot of the catalogue: the bundle's items, then items added after export.
struct Catalog {
  std::vector<const char*> ids;                       // internal index i -> ids[i - 1]
  std::unordered_map<std::string_view, int64_t> index;
  std::vector<uint32_t> positions;                    // [(1 + count) * hashes] Bloom bit positions, row 0 unused
  std::vector<float> added;                           // [M * s] vectors of items N + 1 .. N + M
  int64_t count() const { return static_cast<int64_t>(ids.size()); }
};

void bloom_positions(std::string_view id, uint32_t bits, uint32_t hashes, uint32_t* out);

}  // namespace fmrl

// The recommender behind the C handle.
struct fmrl_recommender {
  fmrl::Bundle bundle;
  std::unique_ptr<fmrl::PoolShare> pool;  // declared before engine: released after the program
  std::unique_ptr<fmrl::Engine> engine;
  bool unknown_raise = false, exclude_seen = false;
  uint32_t bloom_bits = 2048, bloom_hashes = 4;
  size_t state_bytes = 0;

  std::shared_ptr<const fmrl::Catalog> catalog() const {
    std::lock_guard<std::mutex> lock(catalog_mutex);
    return catalog_;
  }
  void set_catalog(std::shared_ptr<const fmrl::Catalog> next) {
    std::lock_guard<std::mutex> lock(catalog_mutex);
    catalog_ = std::move(next);
  }

  std::mutex add_mutex;                             // one add_items at a time
  std::vector<std::unique_ptr<char[]>> added_ids;   // storage of added ids (stable pointers until close)

 private:
  mutable std::mutex catalog_mutex;
  std::shared_ptr<const fmrl::Catalog> catalog_;
};
