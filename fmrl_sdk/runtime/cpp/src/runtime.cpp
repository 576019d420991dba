// Recommender and sessions behind the C ABI (fmrl_sdk/runtime/recommender.py and seen.py).
//
// A session is nothing but its serialised state (the layout of recommender.py's Session.to_bytes):
//   header "<4sHHHHHHI16sQII": magic "FMRS", version, rows, size, k_max, bloom hashes, flags, bloom bytes,
//          bundle fingerprint, observed, unknown, added (observed items added after export)
//   state f32 [rows * size], hidden f32 [size], cached top-k scores f32 [k_max], indices i32 [k_max],
//   Bloom filter [bloom bytes], crc32 of everything before it (written by fmrl_session_to_bytes).
// so a live session costs exactly fmrl_state_bytes and saving one is a copy plus a checksum.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdlib>

#include "blake2/blake2.h"
#include "ids.hpp"
#include "internal.hpp"
#include "picosha2/picosha2.h"

namespace fmrl {
namespace {

constexpr char kMagic[4] = {'F', 'M', 'R', 'S'};
constexpr uint16_t kStateVersion = 2;  // 2: the last counter counts observed added items
constexpr size_t kHeader = 52, kCrc = 4, kMac = 32, kMinKey = 16;
constexpr uint16_t kFlagSigned = 1;  // an HMAC-SHA256 tag (kMac bytes) follows the crc32
constexpr double kMaxAbsState = 1e8; // largest |value| a restored state or hidden vector may hold
constexpr double kMaxAbsVector = 1e4; // largest |value| of an added item's vector (recommender.py MAX_ABS_VECTOR)
// header field offsets
constexpr size_t kVersionAt = 4, kRowsAt = 6, kSizeAt = 8, kKmaxAt = 10, kHashesAt = 12, kFlagsAt = 14,
                 kBloomBytesAt = 16, kFingerprintAt = 20, kObservedAt = 36, kUnknownAt = 44, kAddedAt = 48;

constexpr size_t kMaxOptionsSize = 4096;  // larger: an options struct from before struct_size existed

thread_local std::string last_error;

std::mutex log_mutex;  // held while the callback runs
fmrl_log_callback log_callback = nullptr;
void* log_user = nullptr;
std::atomic<bool> log_set{false};

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename T>
void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}
template <typename T>
void bump(uint8_t* p) {  // a header counter + 1, saturating at its maximum (as Python saves it)
  const T v = load<T>(p);
  if (v != static_cast<T>(~T(0))) store<T>(p, v + 1);
}

// Views into a session's bytes.
struct View {
  uint8_t* base;
  float* state;
  float* hidden;
  float* scores;
  int32_t* indices;
  uint8_t* bloom;
};

View view(const fmrl_recommender* rec, const uint8_t* bytes) {
  const Bundle& b = rec->bundle;
  auto* base = const_cast<uint8_t*>(bytes);
  View v{base, nullptr, nullptr, nullptr, nullptr, nullptr};
  v.state = reinterpret_cast<float*>(base + kHeader);
  v.hidden = v.state + static_cast<size_t>(b.rows) * b.granularity;
  v.scores = v.hidden + b.granularity;
  v.indices = reinterpret_cast<int32_t*>(v.scores + b.k_max);
  v.bloom = reinterpret_cast<uint8_t*>(v.indices + b.k_max);
  return v;
}

uint8_t* bytes_of(fmrl_session* s) { return reinterpret_cast<uint8_t*>(s); }
const uint8_t* bytes_of(const fmrl_session* s) { return reinterpret_cast<const uint8_t*>(s); }

// FMRL_ERR_ARGUMENT naming the NULL argument: "fmrl_open: bundle_path is NULL".
void need(const void* p, const char* function, const char* argument) {
  if (!p) throw Error(FMRL_ERR_ARGUMENT, std::string(function) + ": " + argument + " is NULL");
}

void check_session(const fmrl_recommender* rec, const fmrl_session* s, const char* function) {
  need(rec, function, "rec");
  need(s, function, "session");
  // the layout depends on the bundle and the seen filter's size: both must be this recommender's
  if (std::memcmp(bytes_of(s) + kFingerprintAt, rec->bundle.fingerprint, 16) != 0 ||
      load<uint32_t>(bytes_of(s) + kBloomBytesAt) * 8 != rec->bloom_bits ||
      load<uint16_t>(bytes_of(s) + kHashesAt) != rec->bloom_hashes)
    throw Error(FMRL_ERR_ARGUMENT, "the session belongs to another recommender (bundle or seen filter)");
}

std::string hex(const uint8_t* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += digits[p[i] >> 4], out += digits[p[i] & 15];
  return out;
}

std::vector<unsigned char> sha256(const std::vector<unsigned char>& data) {
  std::vector<unsigned char> digest(picosha2::k_digest_size);
  picosha2::hash256(data.begin(), data.end(), digest.begin(), digest.end());
  return digest;
}

// HMAC-SHA256(key, "fmrl-session\0" + signed_part), as recommender.py's _mac.
std::vector<unsigned char> session_mac(const uint8_t* key, size_t key_size, const uint8_t* part, size_t size) {
  std::vector<unsigned char> k(key, key + key_size);
  if (k.size() > 64) k = sha256(k);
  k.resize(64, 0);
  std::vector<unsigned char> inner(64), outer(64);
  for (size_t i = 0; i < 64; ++i) inner[i] = k[i] ^ 0x36, outer[i] = k[i] ^ 0x5c;
  static const char kPrefix[] = "fmrl-session";
  inner.insert(inner.end(), kPrefix, kPrefix + sizeof kPrefix);  // with its terminating NUL
  inner.insert(inner.end(), part, part + size);
  const auto inner_digest = sha256(inner);
  outer.insert(outer.end(), inner_digest.begin(), inner_digest.end());
  return sha256(outer);
}

void check_key(const uint8_t* key, size_t key_size) {
  if (key && key_size < kMinKey)
    throw Error(FMRL_ERR_ARGUMENT, "a session key needs at least " + std::to_string(kMinKey) +
                                       " bytes (random, kept by the app), got " + std::to_string(key_size));
}

fmrl_session* allocate_session(size_t bytes) {
  void* p = std::malloc(bytes);
  if (!p) throw std::bad_alloc();
  return static_cast<fmrl_session*>(p);
}

fmrl_status fail(fmrl_status status, const char* what) {
  last_error = what;
  // a size answer and a lookup miss are results, not failures worth a log line
  if (status != FMRL_ERR_BUFFER && status != FMRL_ERR_UNKNOWN_ITEM && logging()) log_line(FMRL_LOG_ERROR, last_error);
  return status;
}

// Run `body`, turning exceptions into a status and the thread's last error ("" on success).
template <typename F>
fmrl_status guarded(F&& body) {
  try {
    body();
    last_error.clear();
    return FMRL_OK;
  } catch (const Error& e) {
    return fail(e.status, e.what());
  } catch (const std::bad_alloc&) {
    return fail(FMRL_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(FMRL_ERR_INTERNAL, e.what());
  }
}

// A getter: body's value, or `sentinel` with the last error set when it throws.
template <typename T, typename F>
T getter(T sentinel, F&& body) {
  T value = sentinel;
  guarded([&] { value = body(); });
  return value;
}

std::string unknown_item(const char* item_id) {
  return "unknown item " + py_repr_str(item_id) + ": not in the bundle nor added with add_items";
}

// Internal index of an external id; 0 if unknown.
int64_t lookup(const Catalog& cat, const char* item_id) {
  const auto it = cat.index.find(std::string_view(item_id));
  return it == cat.index.end() ? 0 : it->second;
}

fmrl_open_options default_options() {
  fmrl_open_options o;
  o.struct_size = sizeof o;
  o.on_unknown = FMRL_UNKNOWN_SKIP;
  o.exclude_seen = 0;
  o.bloom_bits = 2048;
  o.bloom_hashes = 4;
  o.threads = 0;
  o.check_executorch_version = 1;
  return o;
}

// The caller's options: the fields that lie entirely within its struct_size, defaults for the others.
fmrl_open_options read_options(const fmrl_open_options* given) {
  fmrl_open_options o = default_options();
  if (!given) return o;
  const size_t size = given->struct_size;
  if (size < sizeof(size_t) || size > kMaxOptionsSize)
    throw Error(FMRL_ERR_ARGUMENT, "fmrl_open: options->struct_size is " + std::to_string(size) +
                                       "; set it with fmrl_open_options_init (sizeof(fmrl_open_options), at most " +
                                       std::to_string(kMaxOptionsSize) + ")");
#define FMRL_READ(field) \
  if (offsetof(fmrl_open_options, field) + sizeof o.field <= size) o.field = given->field
  FMRL_READ(on_unknown);
  FMRL_READ(exclude_seen);
  FMRL_READ(bloom_bits);
  FMRL_READ(bloom_hashes);
  FMRL_READ(threads);
  FMRL_READ(check_executorch_version);
#undef FMRL_READ
  return o;
}

void item_vector(const fmrl_recommender* rec, const Catalog& cat, int64_t index, float* out) {
  const int64_t n = static_cast<int64_t>(rec->bundle.item_ids.size());
  if (index <= n) {
    rec->bundle.table.row(index, out);
  } else {
    const size_t s = static_cast<size_t>(rec->bundle.granularity);
    std::memcpy(out, cat.added.data() + static_cast<size_t>(index - n - 1) * s, s * 4);
  }
}

bool bloom_contains(const uint8_t* bloom, const uint32_t* positions, uint32_t hashes) {
  for (uint32_t j = 0; j < hashes; ++j)
    if (!((bloom[positions[j] >> 3] >> (positions[j] & 7)) & 1)) return false;
  return true;
}

}  // namespace

bool logging() { return log_set.load(std::memory_order_acquire); }

void log_line(fmrl_log_level level, const std::string& message) {
  std::lock_guard<std::mutex> lock(log_mutex);
  if (log_callback) log_callback(level, message.c_str(), log_user);
}

void bloom_positions(std::string_view id, uint32_t bits, uint32_t hashes, uint32_t* out) {
  // double hashing of a 64-bit blake2b digest of the UTF-8 id (seen.item_positions)
  uint8_t digest[8];
  blake2b(digest, sizeof digest, id.data(), id.size(), nullptr, 0);
  const uint64_t h = load<uint64_t>(digest);  // little-endian hosts
  const uint64_t h1 = h & 0xFFFFFFFFu, h2 = (h >> 32) | 1u;
  for (uint32_t j = 0; j < hashes; ++j) out[j] = static_cast<uint32_t>((h1 + j * h2) % bits);
}

uint32_t crc32(const uint8_t* data, size_t size, uint32_t crc) {
  static const auto table = [] {
    std::vector<uint32_t> t(256);
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ data[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

}  // namespace fmrl

using namespace fmrl;

extern "C" {

const char* fmrl_version(void) { return FMRL_VERSION_STRING; }
int fmrl_version_number(void) { return FMRL_VERSION_NUMBER; }
const char* fmrl_executorch_version(void) { return FMRL_EXECUTORCH_VERSION; }
const char* fmrl_last_error(void) { return last_error.c_str(); }

const char* fmrl_status_string(fmrl_status status) {
  switch (static_cast<int>(status)) {  // any int may arrive through the C ABI
    case FMRL_OK: return "FMRL_OK: success";
    case FMRL_ERR_ARGUMENT: return "FMRL_ERR_ARGUMENT: bad argument";
    case FMRL_ERR_BUNDLE: return "FMRL_ERR_BUNDLE: the bundle was refused";
    case FMRL_ERR_STATE: return "FMRL_ERR_STATE: the session state was refused";
    case FMRL_ERR_UNKNOWN_ITEM: return "FMRL_ERR_UNKNOWN_ITEM: unknown item";
    case FMRL_ERR_PROGRAM: return "FMRL_ERR_PROGRAM: ExecuTorch failed to load or run the program";
    case FMRL_ERR_BUFFER: return "FMRL_ERR_BUFFER: an output buffer is too small";
    case FMRL_ERR_INTERNAL: return "FMRL_ERR_INTERNAL: out of memory or internal error";
  }
  return "unknown fmrl_status";
}

void fmrl_set_log_callback(fmrl_log_callback callback, void* user) {
  std::lock_guard<std::mutex> lock(log_mutex);
  log_callback = callback;
  log_user = user;
  log_set.store(callback != nullptr, std::memory_order_release);
}

int fmrl_thread_count(void) { return PoolShare::thread_count(); }

fmrl_status fmrl_open_options_init_size(fmrl_open_options* options, size_t struct_size) {
  return guarded([&] {
    need(options, "fmrl_open_options_init", "options");
    if (struct_size < sizeof(size_t) || struct_size > kMaxOptionsSize)
      throw Error(FMRL_ERR_ARGUMENT, "fmrl_open_options_init: struct_size " + std::to_string(struct_size) +
                                         " out of range [sizeof(size_t), " + std::to_string(kMaxOptionsSize) + "]");
    fmrl_open_options o = default_options();
    o.struct_size = struct_size;
    std::memset(options, 0, struct_size);
    std::memcpy(options, &o, std::min(struct_size, sizeof o));
  });
}

}  // extern "C"

namespace {

// fmrl_open and its fd / buffer forms: the options' checks, `load` (the bundle), then the engine and catalogue.
template <typename Load>
fmrl_status open_with(const char* function, const fmrl_open_options* options, fmrl_recommender** out, Load&& load) {
  return guarded([&] {
    need(out, function, "out");
    *out = nullptr;
    const fmrl_open_options o = read_options(options);
    if (o.threads < 0)
      throw Error(FMRL_ERR_ARGUMENT, "fmrl_open: options->threads must be >= 0, got " + std::to_string(o.threads));
    if (o.on_unknown != FMRL_UNKNOWN_SKIP && o.on_unknown != FMRL_UNKNOWN_RAISE)
      throw Error(FMRL_ERR_ARGUMENT, "on_unknown must be FMRL_UNKNOWN_SKIP or FMRL_UNKNOWN_RAISE");
    if (o.bloom_bits < 8 || o.bloom_bits % 8 || o.bloom_bits > (1u << 20))
      throw Error(FMRL_ERR_ARGUMENT, "bloom bits must be a multiple of 8 in [8, 2^20], got " + std::to_string(o.bloom_bits));
    if (o.bloom_hashes < 1 || o.bloom_hashes > 16)
      throw Error(FMRL_ERR_ARGUMENT, "bloom hashes must be in [1, 16], got " + std::to_string(o.bloom_hashes));
    auto rec = std::make_unique<fmrl_recommender>();
    rec->bundle = load(o.check_executorch_version != 0);
    const Bundle& b = rec->bundle;
    rec->pool = std::make_unique<PoolShare>(o.threads);
    rec->engine = std::make_unique<Engine>(b.program, b.method, b.rows, b.granularity, b.k_max,
                                           static_cast<int64_t>(b.item_ids.size()));
    if (static_cast<int64_t>(b.cold_indices.size()) != b.k_max)
      throw Error(FMRL_ERR_BUNDLE, b.path + "/cold_start.json: " + std::to_string(b.cold_indices.size()) +
                                       " entries, manifest k_max " + std::to_string(b.k_max));
    for (int64_t i : b.cold_indices)
      if (i < 1 || i > static_cast<int64_t>(b.item_ids.size()))
        throw Error(FMRL_ERR_BUNDLE, b.path + "/cold_start.json: index " + std::to_string(i) + " out of range");
    rec->unknown_raise = o.on_unknown == FMRL_UNKNOWN_RAISE;
    rec->exclude_seen = o.exclude_seen != 0;
    rec->bloom_bits = o.bloom_bits;
    rec->bloom_hashes = o.bloom_hashes;
    rec->state_bytes = kHeader + 4 * (static_cast<size_t>(b.rows) * b.granularity + b.granularity + 2 * b.k_max) +
                       o.bloom_bits / 8 + kCrc;
    auto cat = std::make_shared<Catalog>();
    const size_t n = b.item_ids.size();
    cat->ids.reserve(n);
    cat->index.reserve(n);
    cat->positions.assign((n + 1) * o.bloom_hashes, 0);
    for (size_t i = 0; i < n; ++i) {
      cat->ids.push_back(b.item_ids[i].c_str());
      cat->index.emplace(b.item_ids[i], static_cast<int64_t>(i + 1));
      bloom_positions(b.item_ids[i], o.bloom_bits, o.bloom_hashes, &cat->positions[(i + 1) * o.bloom_hashes]);
    }
    rec->set_catalog(std::move(cat));
    if (logging())
      log_line(FMRL_LOG_INFO, "opened " + b.path + ": profile " + py_repr_str(b.profile) + ", " +
                             std::to_string(n) + " items, s " + std::to_string(b.granularity) + ", k_max " +
                             std::to_string(b.k_max) + ", " + std::to_string(rec->state_bytes) +
                             " state bytes per session, fingerprint " + hex(b.fingerprint, 16));
    *out = rec.release();
  });
}

}  // namespace

extern "C" {

fmrl_status fmrl_open(const char* bundle_path, const fmrl_open_options* options, fmrl_recommender** out) {
  return open_with("fmrl_open", options, out, [&](bool check_version) {
    need(bundle_path, "fmrl_open", "bundle_path");
    return load_bundle(bundle_path, check_version);
  });
}

fmrl_status fmrl_open_fd(int fd, uint64_t offset, uint64_t length, const fmrl_open_options* options,
                         fmrl_recommender** out) {
  return open_with("fmrl_open_fd", options, out,
                   [&](bool check_version) { return load_bundle_fd(fd, offset, length, check_version); });
}

fmrl_status fmrl_open_buffer(const void* data, size_t size, const fmrl_open_options* options, fmrl_recommender** out) {
  return open_with("fmrl_open_buffer", options, out, [&](bool check_version) {
    if (size) need(data, "fmrl_open_buffer", "data");
    return load_bundle_buffer(data, size, check_version);
  });
}

void fmrl_close(fmrl_recommender* rec) { delete rec; }

int32_t fmrl_granularity(const fmrl_recommender* rec) {
  return getter<int32_t>(0, [&] {
    need(rec, "fmrl_granularity", "rec");
    return rec->bundle.granularity;
  });
}
int32_t fmrl_k_max(const fmrl_recommender* rec) {
  return getter<int32_t>(0, [&] {
    need(rec, "fmrl_k_max", "rec");
    return rec->bundle.k_max;
  });
}
int64_t fmrl_num_items(const fmrl_recommender* rec) {
  return getter<int64_t>(0, [&] {
    need(rec, "fmrl_num_items", "rec");
    return static_cast<int64_t>(rec->bundle.item_ids.size());
  });
}
int64_t fmrl_item_count(const fmrl_recommender* rec) {
  return getter<int64_t>(0, [&] {
    need(rec, "fmrl_item_count", "rec");
    return rec->catalog()->count();
  });
}
size_t fmrl_state_bytes(const fmrl_recommender* rec) {
  return getter<size_t>(0, [&] {
    need(rec, "fmrl_state_bytes", "rec");
    return rec->state_bytes;
  });
}
fmrl_status fmrl_fingerprint(const fmrl_recommender* rec, uint8_t out[16]) {
  return guarded([&] {
    need(rec, "fmrl_fingerprint", "rec");
    need(out, "fmrl_fingerprint", "out");
    std::memcpy(out, rec->bundle.fingerprint, 16);
  });
}
const char* fmrl_profile(const fmrl_recommender* rec) {
  return getter<const char*>(nullptr, [&] {
    need(rec, "fmrl_profile", "rec");
    return rec->bundle.profile.c_str();
  });
}

int64_t fmrl_item_index(const fmrl_recommender* rec, const char* item_id) {
  return getter<int64_t>(0, [&] {
    need(rec, "fmrl_item_index", "rec");
    need(item_id, "fmrl_item_index", "item_id");
    const int64_t index = lookup(*rec->catalog(), item_id);
    if (!index) throw Error(FMRL_ERR_UNKNOWN_ITEM, unknown_item(item_id));
    return index;
  });
}

const char* fmrl_item_id(const fmrl_recommender* rec, int64_t index) {
  return getter<const char*>(nullptr, [&] {
    need(rec, "fmrl_item_id", "rec");
    const auto cat = rec->catalog();
    if (index < 1 || index > cat->count())
      throw Error(FMRL_ERR_ARGUMENT, "fmrl_item_id: internal item index " + std::to_string(index) +
                                         " out of range [1, " + std::to_string(cat->count()) + "]");
    return cat->ids[index - 1];
  });
}

fmrl_status fmrl_item_vector(const fmrl_recommender* rec, const char* item_id, float* out, size_t capacity) {
  return guarded([&] {
    need(rec, "fmrl_item_vector", "rec");
    need(item_id, "fmrl_item_vector", "item_id");
    need(out, "fmrl_item_vector", "out");
    if (capacity < static_cast<size_t>(rec->bundle.granularity))
      throw Error(FMRL_ERR_BUFFER, "fmrl_item_vector: the buffer holds " + std::to_string(capacity) + " floats, " +
                                       std::to_string(rec->bundle.granularity) + " needed");
    const auto cat = rec->catalog();
    const int64_t index = lookup(*cat, item_id);
    if (!index) throw Error(FMRL_ERR_UNKNOWN_ITEM, unknown_item(item_id));
    item_vector(rec, *cat, index, out);
  });
}

fmrl_status fmrl_add_items(fmrl_recommender* rec, const char* const* ids, size_t count, const float* vectors,
                           size_t dims, size_t* new_count) {
  return guarded([&] {
    need(rec, "fmrl_add_items", "rec");
    if (count) need(ids, "fmrl_add_items", "ids"), need(vectors, "fmrl_add_items", "vectors");
    const size_t s = static_cast<size_t>(rec->bundle.granularity);
    if (new_count) *new_count = 0;
    if (dims < s)
      throw Error(FMRL_ERR_ARGUMENT, "add_items: vectors have " + std::to_string(dims) + " dims, the bundle needs " +
                                         std::to_string(s));
    // ids first, as recommender.py checks them (ids.hpp; a C string cannot hold NUL)
    std::vector<std::string_view> names;
    for (size_t i = 0; i < count; ++i) {
      if (!ids[i]) throw Error(FMRL_ERR_ARGUMENT, "fmrl_add_items: ids[" + std::to_string(i) + "] is NULL");
      names.emplace_back(ids[i], strnlen(ids[i], FMRL_MAX_ID_BYTES + 1));  // the whole id unless refused
      const std::string problem = id_problem(names.back());
      if (!problem.empty()) throw Error(FMRL_ERR_ARGUMENT, "add_items: ids[" + std::to_string(i) + "] " + problem);
    }
    for (size_t i = 0; i < count * dims; ++i)
      if (!std::isfinite(vectors[i])) throw Error(FMRL_ERR_ARGUMENT, "add_items: vectors contain NaN or infinity");
    for (size_t i = 0; i < count; ++i)
      for (size_t d = 0; d < s; ++d)
        if (std::fabs(vectors[i * dims + d]) > kMaxAbsVector)
          throw Error(FMRL_ERR_ARGUMENT, "add_items: vectors hold values with |x| above 10000 (item vectors of real "
                                         "models are far smaller)");
    {
      std::vector<std::string_view> sorted = names;
      std::sort(sorted.begin(), sorted.end());
      if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
        throw Error(FMRL_ERR_ARGUMENT, "add_items: duplicate ids");
    }
    std::lock_guard<std::mutex> lock(rec->add_mutex);
    const auto old = rec->catalog();
    const int64_t n = static_cast<int64_t>(rec->bundle.item_ids.size());
    size_t clashes = 0;
    std::string_view first_clash;
    for (auto name : names) {
      const auto it = old->index.find(name);
      if (it != old->index.end() && it->second <= n && !clashes++) first_clash = name;
    }
    if (clashes)
      throw Error(FMRL_ERR_ARGUMENT, "add_items: " + py_repr_str(first_clash) + " is already in the bundle (" +
                                         std::to_string(clashes) + " such ids); export-time items cannot be replaced");
    auto next = std::make_shared<Catalog>(*old);
    size_t added = 0;
    for (size_t i = 0; i < count; ++i) {
      auto it = next->index.find(names[i]);
      int64_t index;
      if (it == next->index.end()) {
        const size_t len = names[i].size();
        std::unique_ptr<char[]> copy(new char[len + 1]);
        std::memcpy(copy.get(), names[i].data(), len);
        copy[len] = '\0';
        const char* stable = copy.get();
        rec->added_ids.push_back(std::move(copy));
        next->ids.push_back(stable);
        index = next->count();
        next->index.emplace(std::string_view(stable, len), index);
        next->positions.resize(next->positions.size() + rec->bloom_hashes);
        bloom_positions(std::string_view(stable, len), rec->bloom_bits, rec->bloom_hashes,
                        &next->positions[static_cast<size_t>(index) * rec->bloom_hashes]);
        next->added.resize(next->added.size() + s);
        ++added;
      } else {
        index = it->second;
      }
      std::memcpy(next->added.data() + static_cast<size_t>(index - n - 1) * s, vectors + i * dims, s * 4);
    }
    rec->set_catalog(std::move(next));
    if (new_count) *new_count = added;
  });
}

fmrl_status fmrl_session_new(const fmrl_recommender* rec, fmrl_session** out) {
  return guarded([&] {
    need(rec, "fmrl_session_new", "rec");
    need(out, "fmrl_session_new", "out");
    const Bundle& b = rec->bundle;
    fmrl_session* s = allocate_session(rec->state_bytes);
    uint8_t* p = bytes_of(s);
    std::memset(p, 0, rec->state_bytes);
    std::memcpy(p, kMagic, 4);
    store<uint16_t>(p + kVersionAt, kStateVersion);
    store<uint16_t>(p + kRowsAt, static_cast<uint16_t>(b.rows));
    store<uint16_t>(p + kSizeAt, static_cast<uint16_t>(b.granularity));
    store<uint16_t>(p + kKmaxAt, static_cast<uint16_t>(b.k_max));
    store<uint16_t>(p + kHashesAt, static_cast<uint16_t>(rec->bloom_hashes));
    store<uint32_t>(p + kBloomBytesAt, rec->bloom_bits / 8);
    std::memcpy(p + kFingerprintAt, b.fingerprint, 16);
    View v = view(rec, p);
    std::memcpy(v.hidden, b.cold_hidden.data(), b.cold_hidden.size() * 4);
    std::memcpy(v.scores, b.cold_scores.data(), b.cold_scores.size() * 4);
    for (int32_t r = 0; r < b.k_max; ++r) v.indices[r] = static_cast<int32_t>(b.cold_indices[r]);
    *out = s;
  });
}

fmrl_status fmrl_session_restore(const fmrl_recommender* rec, const uint8_t* data, size_t size,
                                 const uint8_t* key, size_t key_size, fmrl_session** out) {
  return guarded([&] {
    need(rec, "fmrl_session_restore", "rec");
    need(out, "fmrl_session_restore", "out");
    if (size) need(data, "fmrl_session_restore", "data");
    *out = nullptr;
    auto state_error = [](const std::string& what) { throw Error(FMRL_ERR_STATE, what); };
    if (size < kHeader + kCrc || std::memcmp(data, kMagic, 4) != 0)
      state_error("not an fmrl-sdk session state (bad magic or too short)");
    const uint16_t version = load<uint16_t>(data + kVersionAt);
    if (version != kStateVersion)
      state_error("session state version " + std::to_string(version) + "; this runtime reads " +
                  std::to_string(kStateVersion));
    const uint16_t flags = load<uint16_t>(data + kFlagsAt);
    if (flags & ~kFlagSigned) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%#x", static_cast<unsigned>(flags));
      state_error(std::string("session state has unknown flags ") + buf);
    }
    if (key) {
      check_key(key, key_size);
      if (!(flags & kFlagSigned))
        state_error("session state is not signed but a key was given (replaced or edited?); start a new session");
      bool match = size >= kHeader + kCrc + kMac;
      if (match) {
        const auto mac = session_mac(key, key_size, data, size - kMac);
        unsigned char diff = 0;  // constant time, as hmac.compare_digest
        for (size_t i = 0; i < kMac; ++i) diff |= mac[i] ^ data[size - kMac + i];
        match = diff == 0;
      }
      if (!match)
        state_error("session state signature does not match the key (edited, or signed with another key); "
                    "start a new session");
      size -= kMac;
    } else if (flags & kFlagSigned) {
      state_error("session state is signed: pass the app's key to restore(data, key=...)");
    }
    if (crc32(data, size - kCrc) != load<uint32_t>(data + size - kCrc))
      state_error("session state is corrupt (checksum mismatch)");
    const Bundle& b = rec->bundle;
    if (std::memcmp(data + kFingerprintAt, b.fingerprint, 16) != 0)
      state_error("session state belongs to another bundle (fingerprint " + hex(data + kFingerprintAt, 16) +
                  ", this bundle " + hex(b.fingerprint, 16) + "); start a new session");
    const uint16_t rows = load<uint16_t>(data + kRowsAt), s = load<uint16_t>(data + kSizeAt);
    const uint16_t k_max = load<uint16_t>(data + kKmaxAt), hashes = load<uint16_t>(data + kHashesAt);
    const uint32_t bloom_bytes = load<uint32_t>(data + kBloomBytesAt);
    if (rows != b.rows || s != b.granularity || k_max != b.k_max)
      state_error("session state shape " + std::to_string(rows) + "x" + std::to_string(s) + "/k_max " +
                  std::to_string(k_max) + " does not match the bundle");
    if (static_cast<uint64_t>(bloom_bytes) * 8 != rec->bloom_bits || hashes != rec->bloom_hashes)
      state_error("session state uses a " + std::to_string(static_cast<uint64_t>(bloom_bytes) * 8) + "-bit/" +
                  std::to_string(hashes) + "-hash seen filter; this Recommender was opened with " +
                  std::to_string(rec->bloom_bits) + "/" + std::to_string(rec->bloom_hashes));
    if (size != rec->state_bytes)
      state_error("session state has " + std::to_string(size) + " bytes, expected " +
                  std::to_string(rec->state_bytes) + " (truncated?)");
    // values the runtime never writes (recommender.py: _check_state_values)
    fmrl_session* session = allocate_session(rec->state_bytes);
    std::unique_ptr<fmrl_session, void (*)(fmrl_session*)> owned(session, fmrl_session_free);
    std::memcpy(bytes_of(session), data, rec->state_bytes);
    store<uint16_t>(bytes_of(session) + kFlagsAt, 0);
    const View v = view(rec, bytes_of(session));
    const size_t state_count = static_cast<size_t>(b.rows) * b.granularity;
    auto bounded = [](const float* x, size_t n) {
      for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(x[i]) || std::fabs(x[i]) > kMaxAbsState) return false;
      return true;
    };
    if (!bounded(v.state, state_count))
      state_error("session state: its state holds NaN, infinity or |values| above 1e+08; start a new session");
    if (!bounded(v.hidden, b.granularity))
      state_error("session state: its hidden vector holds NaN, infinity or |values| above 1e+08; start a new session");
    for (int32_t r = 0; r < b.k_max; ++r)
      if (!std::isfinite(v.scores[r]))
        state_error("session state: cached scores hold NaN or infinity; start a new session");
    std::vector<int32_t> sorted(v.indices, v.indices + b.k_max);
    std::sort(sorted.begin(), sorted.end());
    if (sorted.front() < 1 || sorted.back() > static_cast<int64_t>(b.item_ids.size()) ||
        std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end())
      state_error("session state: cached item indices outside [1, " + std::to_string(b.item_ids.size()) +
                  "] or repeated; start a new session");
    *out = owned.release();
  });
}

void fmrl_session_free(fmrl_session* session) { std::free(session); }

fmrl_status fmrl_session_to_bytes(const fmrl_recommender* rec, const fmrl_session* session, const uint8_t* key,
                                  size_t key_size, uint8_t* out, size_t capacity, size_t* size) {
  return guarded([&] {
    check_session(rec, session, "fmrl_session_to_bytes");
    check_key(key, key_size);
    const size_t total = rec->state_bytes + (key ? kMac : 0);
    if (size) *size = total;
    // NULL with capacity 0 is the documented size query (FMRL_ERR_BUFFER, *size set); NULL with room claimed
    // is a caller bug, not a small buffer
    if (!out && capacity != 0) need(out, "fmrl_session_to_bytes", "out");
    if (!out || capacity < total)
      throw Error(FMRL_ERR_BUFFER, "fmrl_session_to_bytes: needs a buffer of " + std::to_string(total) +
                                       " bytes, got " + std::to_string(capacity));
    const size_t body = rec->state_bytes - kCrc;
    std::memcpy(out, bytes_of(session), body);
    store<uint16_t>(out + kFlagsAt, key ? kFlagSigned : 0);
    store<uint32_t>(out + body, crc32(out, body));
    if (key) {
      const auto mac = session_mac(key, key_size, out, rec->state_bytes);
      std::memcpy(out + rec->state_bytes, mac.data(), kMac);
    }
  });
}

fmrl_status fmrl_observe_index(fmrl_recommender* rec, fmrl_session* session, int64_t index) {
  return guarded([&] {
    check_session(rec, session, "fmrl_observe_index");
    const auto cat = rec->catalog();
    if (index < 1 || index > cat->count())
      throw Error(FMRL_ERR_ARGUMENT, "internal item index " + std::to_string(index) + " out of range [1, " +
                                         std::to_string(cat->count()) + "]");
    uint8_t* p = bytes_of(session);
    View v = view(rec, p);
    float x[4096];
    std::vector<float> heap;
    float* xp = x;
    if (rec->bundle.granularity > 4096) heap.resize(rec->bundle.granularity), xp = heap.data();
    item_vector(rec, *cat, index, xp);
    rec->engine->step(xp, v.state, v.scores, v.indices, v.state, v.hidden);
    // after the step: a failed step leaves the session as it was
    const uint32_t* positions = &cat->positions[static_cast<size_t>(index) * rec->bloom_hashes];
    for (uint32_t j = 0; j < rec->bloom_hashes; ++j) v.bloom[positions[j] >> 3] |= uint8_t(1u << (positions[j] & 7));
    bump<uint64_t>(p + kObservedAt);
    if (index > static_cast<int64_t>(rec->bundle.item_ids.size())) bump<uint32_t>(p + kAddedAt);
  });
}

fmrl_status fmrl_observe(fmrl_recommender* rec, fmrl_session* session, const char* item_id, int* advanced) {
  if (advanced) *advanced = 0;
  int64_t index = 0;
  const fmrl_status found = guarded([&] {
    check_session(rec, session, "fmrl_observe");
    need(item_id, "fmrl_observe", "item_id");
    const std::string problem = id_problem(std::string_view(item_id, strnlen(item_id, FMRL_MAX_ID_BYTES + 1)));
    if (!problem.empty()) throw Error(FMRL_ERR_ARGUMENT, "observe: item id " + problem);
    index = lookup(*rec->catalog(), item_id);
    if (index) return;
    if (rec->unknown_raise) throw Error(FMRL_ERR_UNKNOWN_ITEM, unknown_item(item_id));
    uint8_t* p = bytes_of(session);
    bump<uint32_t>(p + kUnknownAt);
  });
  if (found != FMRL_OK || !index) return found;
  const fmrl_status stepped = fmrl_observe_index(rec, session, index);
  if (stepped == FMRL_OK && advanced) *advanced = 1;
  return stepped;
}

fmrl_status fmrl_recommend(const fmrl_recommender* rec, const fmrl_session* session, int k, int exclude_seen,
                           const char** ids, float* scores, int64_t* indices, size_t* count) {
  return guarded([&] {
    check_session(rec, session, "fmrl_recommend");
    need(count, "fmrl_recommend", "count");
    const int32_t k_max = rec->bundle.k_max;
    if (k < 1 || k > k_max)
      throw Error(FMRL_ERR_ARGUMENT, "k must be in [1, " + std::to_string(k_max) + "] (the bundle's k_max), got " +
                                         std::to_string(k));
    if ((ids || scores || indices) && *count < static_cast<size_t>(k))
      throw Error(FMRL_ERR_BUFFER, "fmrl_recommend: room for " + std::to_string(*count) + " items, k is " +
                                       std::to_string(k));
    const bool exclude = exclude_seen == FMRL_EXCLUDE_SEEN_DEFAULT ? rec->exclude_seen : exclude_seen != 0;
    const auto cat = rec->catalog();
    const View v = view(rec, bytes_of(session));
    const uint32_t h = rec->bloom_hashes;
    const int64_t n = static_cast<int64_t>(rec->bundle.item_ids.size());
    const int64_t added = cat->count() - n;
    size_t written = 0;
    auto emit = [&](int64_t index, float score) {
      if (exclude && bloom_contains(v.bloom, &cat->positions[static_cast<size_t>(index) * h], h)) return;
      if (ids) ids[written] = cat->ids[index - 1];
      if (scores) scores[written] = score;
      if (indices) indices[written] = index;
      ++written;
    };
    if (added == 0) {
      for (int32_t r = 0; r < k_max && written < static_cast<size_t>(k); ++r) emit(v.indices[r], v.scores[r]);
    } else {
      // the program's top-k_max merged with every added item scored as hidden . vector (stable, best first)
      const size_t s = static_cast<size_t>(rec->bundle.granularity);
      std::vector<std::pair<float, int64_t>> merged;
      merged.reserve(k_max + added);
      for (int32_t r = 0; r < k_max; ++r) merged.emplace_back(v.scores[r], v.indices[r]);
      for (int64_t a = 0; a < added; ++a) {
        const float* vec = cat->added.data() + static_cast<size_t>(a) * s;
        float dot = 0.0f;
        for (size_t j = 0; j < s; ++j) dot += vec[j] * v.hidden[j];
        merged.emplace_back(dot, n + 1 + a);
      }
      std::stable_sort(merged.begin(), merged.end(), [](const auto& a, const auto& b) {
        if (std::isnan(a.first)) return false;  // NaN last, as numpy's argsort
        return std::isnan(b.first) || a.first > b.first;
      });
      for (size_t r = 0; r < merged.size() && written < static_cast<size_t>(k); ++r)
        emit(merged[r].second, merged[r].first);
    }
    *count = written;
  });
}

fmrl_status fmrl_session_hidden(const fmrl_recommender* rec, const fmrl_session* session, float* out,
                                size_t capacity) {
  return guarded([&] {
    check_session(rec, session, "fmrl_session_hidden");
    need(out, "fmrl_session_hidden", "out");
    if (capacity < static_cast<size_t>(rec->bundle.granularity))
      throw Error(FMRL_ERR_BUFFER, "fmrl_session_hidden: needs " + std::to_string(rec->bundle.granularity) + " floats");
    std::memcpy(out, view(rec, bytes_of(session)).hidden, static_cast<size_t>(rec->bundle.granularity) * 4);
  });
}

fmrl_status fmrl_session_counters(const fmrl_session* session, uint64_t* observed, uint32_t* unknown,
                                  uint32_t* added) {
  return guarded([&] {
    need(session, "fmrl_session_counters", "session");
    const uint8_t* p = bytes_of(session);
    if (observed) *observed = load<uint64_t>(p + kObservedAt);
    if (unknown) *unknown = load<uint32_t>(p + kUnknownAt);
    if (added) *added = load<uint32_t>(p + kAddedAt);
  });
}

}  // extern "C"
