// fmrl_replay: the C++ counterpart of `fmrl-sdk simulate` (fmrl_sdk/simulate/replay.py), on the C ABI.
//
//   fmrl_replay --bundle B --stream S.jsonl --report R.json [--k 10] [--out RECS.jsonl] [--exclude-seen]
//               [--strict] [--threads N] [--save-state USER=FILE]... [--load-state USER=FILE]...
//
// For every valid event of user u: recommend k items from u's session (cold start for a new user), score
// them against the event's item (online HitRate@k / NDCG@k), then observe the item. Bad lines are counted
// by kind exactly as simulate counts them (fmrl_sdk/simulate/events.py). --load-state starts a user from a
// saved session (Python's Session.to_bytes() or --save-state's); --save-state writes a user's session at the
// end. Bad usage or a bad line under --strict: one line "error: ..." on stderr, exit 2.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fmrl_runtime.h"
#include "nlohmann_json/json.hpp"
#include "paths.hpp"

namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

const char* const kBadKinds[] = {"invalid_json", "duplicate_key", "not_object", "missing_field", "wrong_type",
                                 "unknown_item", "ts_backwards"};
enum BadKind { kInvalidJson, kDuplicateKey, kNotObject, kMissingField, kWrongType, kUnknownItem, kTsBackwards,
               kBadKindCount };
constexpr size_t kMaxBadSamples = 100;

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- one line's fields, as Python's json.loads + events.check_fields see them ------------------------

struct Field {
  enum Kind { kAbsent, kNull, kBool, kInt, kFloat, kString, kStructured } kind = kAbsent;
  std::string text;   // string value, or an integer's decimal digits
  double number = 0;  // float value (also set for integers)
  int64_t integer = 0;
  bool exact_int = false;  // integer fits int64 (ts comparisons are exact then)
};

// Numbers Python's json reads but nlohmann refuses (NaN, Infinity, -Infinity, floats beyond double, integers
// beyond double with at most 4300 digits) are rewritten to kMarker before a second parse; `literals` says,
// for every kMarker in the rewritten line in order, what stood there (genuine kMarker text included).
constexpr const char* kMarker = "0.0e0";
constexpr size_t kMaxIntDigits = 4300;  // Python's default int_max_str_digits: longer integers are invalid_json
constexpr int kMaxDepth = 960;          // Python's json recursion limit under simulate is ~940-990 (stack-dependent)

struct Literal {
  enum Kind { kGenuine, kNonFinite, kBigInt } kind;
  std::string text;
};

// SAX handler keeping only the top-level "user", "item", "ts" and "event", and refusing an object with a
// duplicate key at any depth (reported when the object closes, as Python's object_pairs_hook does) and
// nesting deeper than kMaxDepth. The parsing itself is nlohmann's.
struct LineFields : nlohmann::json_sax<Json> {
  static constexpr const char* kNames[4] = {"user", "item", "ts", "event"};
  enum Outcome { kParsed, kSyntax, kDuplicate, kTooDeep };
  Field fields[4];
  int depth = 0, slot = -1;
  bool top_object = false;
  Outcome outcome = kParsed;
  std::string error;
  std::vector<std::unordered_set<std::string>> keys;  // per open object level (reused)
  std::vector<std::string> duplicate;                 // per open object level: first duplicated key, or ""
  size_t open_objects = 0;
  const std::vector<Literal>* literals = nullptr;
  size_t next_literal = 0;

  void reset(const std::vector<Literal>* rewritten) {
    for (auto& f : fields) f = Field();
    depth = 0, slot = -1, top_object = false, outcome = kParsed, open_objects = 0;
    error.clear();
    literals = rewritten, next_literal = 0;
  }
  Field* target() {
    if (depth != 1 || slot < 0) return nullptr;
    Field* f = &fields[slot];
    *f = Field();
    slot = -1;
    return f;
  }
  bool null() override {
    if (Field* f = target()) f->kind = Field::kNull;
    return true;
  }
  bool boolean(bool) override {
    if (Field* f = target()) f->kind = Field::kBool;
    return true;
  }
  bool number_integer(number_integer_t v) override {
    if (Field* f = target()) {
      f->kind = Field::kInt, f->integer = v, f->exact_int = true, f->number = static_cast<double>(v);
      f->text = std::to_string(v);
    }
    return true;
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (Field* f = target()) {
      f->kind = Field::kInt, f->number = static_cast<double>(v), f->text = std::to_string(v);
      f->exact_int = v <= static_cast<uint64_t>(INT64_MAX);
      f->integer = static_cast<int64_t>(v);
    }
    return true;
  }
  bool number_float(number_float_t v, const string_t& raw) override {
    const Literal* literal = nullptr;
    if (literals && raw == kMarker) literal = &(*literals)[next_literal++];
    Field* f = target();
    if (!f) return true;
    if (literal && literal->kind == Literal::kNonFinite) {
      f->kind = Field::kFloat, f->number = HUGE_VAL;
    } else if (literal && literal->kind == Literal::kBigInt) {
      f->kind = Field::kInt, f->number = std::strtod(literal->text.c_str(), nullptr), f->text = literal->text;
    } else if (raw.find_first_of(".eE") == std::string::npos) {  // an integer beyond 64 bits: still an int
      f->kind = Field::kInt, f->number = v, f->text = raw;
    } else {
      f->kind = Field::kFloat, f->number = v;
    }
    return true;
  }
  bool string(string_t& v) override {
    if (Field* f = target()) f->kind = Field::kString, f->text = std::move(v);
    return true;
  }
  bool binary(binary_t&) override { return true; }
  bool enter() {
    if (++depth > kMaxDepth) {
      outcome = kTooDeep;
      return false;
    }
    return true;
  }
  bool start_object(std::size_t) override {
    if (depth == 0) top_object = true;
    if (Field* f = target()) f->kind = Field::kStructured;
    if (keys.size() <= open_objects) keys.emplace_back(), duplicate.emplace_back();
    keys[open_objects].clear();
    duplicate[open_objects].clear();
    ++open_objects;
    return enter();
  }
  bool key(string_t& k) override {
    if (depth == 1) {
      slot = -1;
      for (int i = 0; i < 4; ++i)
        if (k == kNames[i]) slot = i;
    }
    if (!keys[open_objects - 1].insert(k).second && duplicate[open_objects - 1].empty())
      duplicate[open_objects - 1] = k.empty() ? std::string(1, '\0') : k;
    return true;
  }
  bool end_object() override {
    --depth;
    --open_objects;
    if (!duplicate[open_objects].empty()) {
      outcome = kDuplicate;
      error = duplicate[open_objects] == std::string(1, '\0') ? std::string() : duplicate[open_objects];
      return false;
    }
    return true;
  }
  bool start_array(std::size_t) override {
    if (Field* f = target()) f->kind = Field::kStructured;
    return enter();
  }
  bool end_array() override {
    --depth;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    outcome = kSyntax;
    error = e.what();
    const size_t cut = error.find("] ");  // drop nlohmann's "[json.exception.parse_error.101] "
    if (cut != std::string::npos) error = error.substr(cut + 2);
    return false;
  }
};

// Rewrite what Python's json accepts and nlohmann does not (see kMarker); false when nothing needed it.
bool rewrite_python_numbers(const std::string& line, std::string& out, std::vector<Literal>& literals) {
  out.clear();
  literals.clear();
  bool changed = false;
  auto replace = [&](Literal::Kind kind, std::string text) {
    out += kMarker;
    out += ' ';  // keeps "NaN1" two tokens, as Python reads it
    literals.push_back({kind, std::move(text)});
    changed = true;
  };
  for (size_t i = 0; i < line.size();) {
    const char c = line[i];
    if (c == '"') {  // a string, escapes included, copied as is
      size_t j = i + 1;
      while (j < line.size() && line[j] != '"') j += line[j] == '\\' ? 2 : 1;
      j = std::min(j + 1, line.size());
      out.append(line, i, j - i);
      i = j;
    } else if (line.compare(i, 3, "NaN") == 0 && (i == 0 || line[i - 1] != '-')) {
      replace(Literal::kNonFinite, "");
      i += 3;
    } else if (line.compare(i, 8, "Infinity") == 0 || line.compare(i, 9, "-Infinity") == 0) {
      replace(Literal::kNonFinite, "");
      i += line[i] == '-' ? 9 : 8;
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      size_t j = i + 1;
      while (j < line.size() && std::strchr("0123456789+-.eE", line[j]) && line[j] != '\0') ++j;
      const std::string run = line.substr(i, j - i);
      const bool integral = run.find_first_of(".eE") == std::string::npos;
      const size_t digits = run.size() - (run[0] == '-');
      char* end = nullptr;
      const double value = std::strtod(run.c_str(), &end);
      const bool whole = end == run.c_str() + run.size();
      if (run == kMarker) {
        out += run;
        literals.push_back({Literal::kGenuine, ""});
      } else if (whole && !std::isfinite(value) && !(integral && digits > kMaxIntDigits)) {
        replace(integral ? Literal::kBigInt : Literal::kNonFinite, integral ? run : "");
      } else {
        out += run;
      }
      i = j;
    } else {
      out += c;
      ++i;
    }
  }
  return changed;
}

// Python `a < b` for two finite JSON numbers (exact for 64-bit integers).
bool ts_less(const Field& a, const Field& b) {
  if (a.exact_int && b.exact_int) return a.integer < b.integer;
  if (!a.exact_int && !b.exact_int) return a.number < b.number;
  if (a.exact_int) {  // int < float
    const double f = b.number;
    if (f >= 9223372036854775808.0) return true;
    if (f < -9223372036854775808.0) return false;
    const double fl = std::floor(f);
    return a.integer < static_cast<int64_t>(fl) || (a.integer == static_cast<int64_t>(fl) && fl < f);
  }
  const double f = a.number;  // float < int
  if (f >= 9223372036854775808.0) return false;
  if (f < -9223372036854775808.0) return true;
  const double fl = std::floor(f);
  return static_cast<int64_t>(fl) < b.integer;
}

const char* type_name(const Field& f) {
  switch (f.kind) {
    case Field::kNull: return "NoneType";
    case Field::kBool: return "bool";
    case Field::kInt: return "int";
    case Field::kFloat: return "float";
    case Field::kString: return "str";
    default: return "dict or list";
  }
}

struct Bad {
  BadKind kind;
  std::string what;
};

// events.check_fields: the first failing check, or kBadKindCount when the line's fields are valid.
Bad check_fields(const LineFields& p) {
  if (!p.top_object) return {kNotObject, "expected a JSON object"};
  const Field &user = p.fields[0], &item = p.fields[1], &ts = p.fields[2], &event = p.fields[3];
  auto missing = [](const Field& f) {
    return f.kind == Field::kAbsent || f.kind == Field::kNull || (f.kind == Field::kString && f.text.empty());
  };
  if (missing(user)) return {kMissingField, "missing 'user'"};
  if (missing(item)) return {kMissingField, "missing 'item'"};
  if (user.kind != Field::kString && user.kind != Field::kInt)
    return {kWrongType, std::string("'user' must be a string or an integer, got ") + type_name(user)};
  if (item.kind != Field::kString && item.kind != Field::kInt)
    return {kWrongType, std::string("'item' must be a string or an integer, got ") + type_name(item)};
  if (ts.kind != Field::kAbsent && ts.kind != Field::kNull &&
      ((ts.kind != Field::kInt && ts.kind != Field::kFloat) || !std::isfinite(ts.number)))
    return {kWrongType, "'ts' must be a finite number"};
  if (event.kind != Field::kAbsent && event.kind != Field::kNull && event.kind != Field::kString)
    return {kWrongType, std::string("'event' must be a string, got ") + type_name(event)};
  return {kBadKindCount, ""};
}

bool only_ascii_whitespace(const std::string& raw) {  // Python bytes.strip() leaves nothing
  return raw.find_first_not_of(" \t\n\r\x0b\x0c") == std::string::npos;
}

// ---- files ---------------------------------------------------------------------------------------

void write_atomic(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw Usage(path + ": cannot write (" + std::strerror(errno) + ")");
  const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size() && std::fflush(f) == 0 &&
                  ::fsync(fileno(f)) == 0;
  std::fclose(f);
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Usage(path + ": cannot write (" + std::strerror(errno) + ")");
  }
}

std::string read_all(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw Usage(path + ": cannot read (" + std::strerror(errno) + ")");
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
  std::fclose(f);
  return data;
}

double percentile(const std::vector<double>& sorted, double p) {  // numpy's default (linear)
  if (sorted.empty()) return 0.0;
  const double pos = (sorted.size() - 1) * p / 100.0;
  const size_t lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

// ---- the replay ----------------------------------------------------------------------------------

struct Slot {
  fmrl_session* session = nullptr;
  Field last_ts;  // kAbsent until a ts is seen
  double last_hit = 0.0, last_ndcg = 0.0;
};

struct Options {
  std::string bundle, stream, report, out;
  int k = 10, threads = 0;
  bool exclude_seen = false, strict = false, quiet = false;
  std::vector<std::pair<std::string, std::string>> save, load;
};

std::pair<std::string, std::string> user_file(const std::string& flag, const std::string& value) {
  const size_t eq = value.rfind('=');
  if (eq == std::string::npos || eq == 0 || eq + 1 == value.size())
    throw Usage(flag + " " + value + ": expected USER=FILE");
  return {value.substr(0, eq), value.substr(eq + 1)};
}

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Usage(a + " needs a value");
      return argv[++i];
    };
    auto integer = [&](const std::string& v) {
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end) throw Usage(a + " " + v + ": expected an integer");
      return static_cast<int>(n);
    };
    if (a == "--bundle") o.bundle = value();
    else if (a == "--stream") o.stream = value();
    else if (a == "--report") o.report = value();
    else if (a == "--out") o.out = value();
    else if (a == "--k") o.k = integer(value());
    else if (a == "--threads") o.threads = integer(value());
    else if (a == "--exclude-seen") o.exclude_seen = true;
    else if (a == "--strict") o.strict = true;
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--save-state") o.save.push_back(user_file(a, value()));
    else if (a == "--load-state") o.load.push_back(user_file(a, value()));
    else if (a == "--help" || a == "-h") {
      std::printf("usage: fmrl_replay --bundle B --stream S.jsonl --report R.json [--k 10] [--out RECS.jsonl]\n"
                  "       [--exclude-seen] [--strict] [--threads N] [--save-state USER=FILE]... "
                  "[--load-state USER=FILE]...\n");
      std::exit(0);
    } else throw Usage("unknown option " + a + " (see --help)");
  }
  if (o.bundle.empty() || o.stream.empty() || o.report.empty()) throw Usage("--bundle, --stream and --report are required");
  return o;
}

[[noreturn]] void fail_runtime() { throw Usage(fmrl_last_error()); }

int run(const Options& opt) {
  fmrl_open_options open_options;
  fmrl_open_options_init(&open_options);
  open_options.threads = opt.threads;
  fmrl_recommender* rec = nullptr;
  if (fmrl_open(opt.bundle.c_str(), &open_options, &rec) != FMRL_OK) fail_runtime();
  const int k_max = fmrl_k_max(rec);
  if (opt.k < 1 || opt.k > k_max)
    throw Usage("--k " + std::to_string(opt.k) + ": must be in [1, " + std::to_string(k_max) + "] (the bundle's k_max)");
  const std::string stream_name = fmrl::path_normalise(opt.stream);
  FILE* in = std::fopen(opt.stream.c_str(), "rb");
  if (!in) throw Usage(stream_name + ": stream not found");
  FILE* out = nullptr;
  if (!opt.out.empty() && !(out = std::fopen(opt.out.c_str(), "wb"))) throw Usage(opt.out + ": cannot write");

  // users in order of appearance (the report sums over them in that order, as Python's dict does)
  std::unordered_map<std::string, size_t> user_slot;
  std::vector<Slot> slots;
  for (const auto& [user, file] : opt.load) {
    const std::string data = read_all(file);
    Slot slot;
    if (fmrl_session_restore(rec, reinterpret_cast<const uint8_t*>(data.data()), data.size(), nullptr, 0,
                             &slot.session) != FMRL_OK)
      throw Usage(file + ": " + fmrl_last_error());
    if (!user_slot.emplace(user, slots.size()).second) throw Usage("--load-state " + user + ": given twice");
    slots.push_back(slot);
  }

  std::vector<double> gain(opt.k);
  for (int r = 0; r < opt.k; ++r) gain[r] = 1.0 / std::log2(r + 2.0);
  long long lines = 0, events = 0, hits = 0, bad[kBadKindCount] = {};
  double ndcg = 0.0;
  OrderedJson samples = OrderedJson::array();
  std::vector<double> latency_us;
  std::vector<int64_t> top_index(opt.k);
  std::vector<float> top_score(opt.k);
  std::vector<const char*> top_id(opt.k);
  LineFields parsed;
  std::string rewritten;
  std::vector<Literal> literals;
  char* raw_buf = nullptr;
  size_t raw_cap = 0;
  ssize_t got;
  const auto started = std::chrono::steady_clock::now();
  while ((got = ::getline(&raw_buf, &raw_cap, in)) > 0) {
    ++lines;
    const std::string raw(raw_buf, static_cast<size_t>(got));
    Bad problem{kBadKindCount, ""};
    // events.parse_line: a leading BOM is ignored; blank lines are skipped
    const size_t skip = raw.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
    parsed.reset(nullptr);
    bool ok = Json::sax_parse(raw.begin() + skip, raw.end(), &parsed);
    if (!ok && parsed.outcome == LineFields::kSyntax &&
        rewrite_python_numbers(raw.substr(skip), rewritten, literals)) {
      const std::string first_error = parsed.error;
      parsed.reset(&literals);
      ok = Json::sax_parse(rewritten.begin(), rewritten.end(), &parsed);
      if (!ok && parsed.outcome == LineFields::kSyntax) parsed.error = first_error;
    }
    int64_t index = 0;
    Slot* slot = nullptr;
    std::string user;
    if (!ok) {
      if (parsed.outcome == LineFields::kSyntax && only_ascii_whitespace(raw.substr(skip))) continue;
      if (parsed.outcome == LineFields::kDuplicate)
        problem = {kDuplicateKey, "duplicate key " + parsed.error};
      else
        problem = {kInvalidJson, parsed.outcome == LineFields::kTooDeep ? std::string("invalid JSON (nested too deeply)")
                                                                          : "invalid JSON (" + parsed.error + ")"};
    } else {
      problem = check_fields(parsed);
    }
    const Field &user_field = parsed.fields[0], &item_field = parsed.fields[1], &ts = parsed.fields[2];
    if (problem.kind == kBadKindCount) {
      user = user_field.text;
      index = fmrl_item_index(rec, item_field.text.c_str());
      if (!index || item_field.text.find('\0') != std::string::npos) {
        index = 0;
        problem = {kUnknownItem, "unknown item " + item_field.text};
      } else {
        const auto found = user_slot.find(user);
        slot = found == user_slot.end() ? nullptr : &slots[found->second];
        const bool has_ts = ts.kind == Field::kInt || ts.kind == Field::kFloat;
        if (has_ts && slot && slot->last_ts.kind != Field::kAbsent && ts_less(ts, slot->last_ts))
          problem = {kTsBackwards, "ts earlier than the previous ts of user " + user};
      }
    }
    if (problem.kind != kBadKindCount) {
      if (opt.strict) throw Usage(stream_name + ":" + std::to_string(lines) + ": " + problem.what);
      ++bad[problem.kind];
      if (samples.size() < kMaxBadSamples)
        samples.push_back({{"line", lines}, {"kind", kBadKinds[problem.kind]}, {"what", problem.what}});
      continue;
    }
    if (!slot) {
      user_slot.emplace(user, slots.size());
      slots.emplace_back();
      slot = &slots.back();
      if (fmrl_session_new(rec, &slot->session) != FMRL_OK) fail_runtime();
    }
    if (ts.kind == Field::kInt || ts.kind == Field::kFloat) slot->last_ts = ts;
    const auto t0 = std::chrono::steady_clock::now();
    size_t count = static_cast<size_t>(opt.k);
    if (fmrl_recommend(rec, slot->session, opt.k, opt.exclude_seen ? 1 : 0, out ? top_id.data() : nullptr,
                       top_score.data(), top_index.data(), &count) != FMRL_OK)
      fail_runtime();
    const auto rank = std::find(top_index.begin(), top_index.begin() + count, index) - top_index.begin();
    if (static_cast<size_t>(rank) < count) {
      ++hits;
      ndcg += gain[rank];
      slot->last_hit = 1.0, slot->last_ndcg = gain[rank];
    } else {
      slot->last_hit = 0.0, slot->last_ndcg = 0.0;
    }
    if (fmrl_observe_index(rec, slot->session, index) != FMRL_OK) fail_runtime();
    latency_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    ++events;
    if (out) {  // as simulate --out; an integer id keeps its digits (JSON numbers beyond 64 bits included)
      auto id_json = [](const Field& f) {
        return f.kind == Field::kString ? Json(f.text).dump(-1, ' ', false, Json::error_handler_t::replace) : f.text;
      };
      const std::string text_line =
          "{\"line\":" + std::to_string(lines) + ",\"user\":" + id_json(user_field) + ",\"item\":" +
          id_json(item_field) + ",\"hit\":" + (slot->last_hit > 0 ? "true" : "false") + ",\"recs\":" +
          Json(std::vector<std::string>(top_id.begin(), top_id.begin() + count))
              .dump(-1, ' ', false, Json::error_handler_t::replace) +
          ",\"scores\":" + Json(std::vector<float>(top_score.begin(), top_score.begin() + count)).dump() + "}\n";
      std::fwrite(text_line.data(), 1, text_line.size(), out);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::free(raw_buf);
  std::fclose(in);
  if (out) std::fclose(out);

  for (const auto& [user, file] : opt.save) {
    const auto found = user_slot.find(user);
    if (found == user_slot.end()) throw Usage("--save-state " + user + ": no such user in the stream");
    std::string data(fmrl_state_bytes(rec), '\0');
    size_t size = 0;
    if (fmrl_session_to_bytes(rec, slots[found->second].session, nullptr, 0, reinterpret_cast<uint8_t*>(&data[0]), data.size(), &size) !=
        FMRL_OK)
      fail_runtime();
    write_atomic(file, data);
  }

  double last_hit = 0.0, last_ndcg = 0.0;
  for (const Slot& slot : slots) last_hit += slot.last_hit, last_ndcg += slot.last_ndcg;
  std::vector<double> sorted = latency_us;
  std::sort(sorted.begin(), sorted.end());
  if (sorted.empty()) sorted.push_back(0.0);
  const std::string k = std::to_string(opt.k);
  const double n_users = static_cast<double>(slots.size());
  OrderedJson bad_lines = OrderedJson::object();
  for (int kind = 0; kind < kBadKindCount; ++kind)
    if (bad[kind]) bad_lines[kBadKinds[kind]] = bad[kind];
  struct rusage usage;
  ::getrusage(RUSAGE_SELF, &usage);
  const std::string profile = fmrl_profile(rec);
  OrderedJson report = {
      {"runtime", std::string("fmrl_runtime ") + fmrl_version() + " (C++, ExecuTorch " + fmrl_executorch_version() + ")"},
      {"stream", stream_name},
      {"bundle", fmrl::path_normalise(opt.bundle)},
      {"profile", profile.empty() ? OrderedJson() : OrderedJson(profile)},
      {"granularity", fmrl_granularity(rec)},
      {"k", opt.k},
      {"exclude_seen", opt.exclude_seen},
      {"lines", lines},
      {"events", events},
      {"bad_lines", bad_lines},
      {"bad_line_samples", samples},
      {"latency_us", {{"p50", percentile(sorted, 50)}, {"p95", percentile(sorted, 95)},
                      {"p99", percentile(sorted, 99)}, {"max", sorted.back()}}},
      {"events_per_s", seconds > 0 ? latency_us.size() / seconds : 0.0},
      {"online", {{"HitRate@" + k, events ? double(hits) / events : 0.0},
                  {"NDCG@" + k, events ? ndcg / events : 0.0}}},
      {"online_last_event", {{"HitRate@" + k, n_users ? last_hit / n_users : 0.0},
                             {"NDCG@" + k, n_users ? last_ndcg / n_users : 0.0}}},
      {"users", slots.size()},
      {"state_bytes_per_user", fmrl_state_bytes(rec)},
      {"peak_rss_bytes", static_cast<long long>(usage.ru_maxrss) * 1024},
      {"seconds", seconds},
  };
  // a sample may quote bytes that are not UTF-8: written as U+FFFD
  write_atomic(opt.report, report.dump(2, ' ', false, OrderedJson::error_handler_t::replace) + "\n");
  if (!opt.quiet)
    std::printf("%lld events (%lld lines, %zu users), online HitRate@%d %.4f NDCG@%d %.4f, p50 %.1f us -> %s\n",
                events, lines, slots.size(), opt.k, events ? double(hits) / events : 0.0, opt.k,
                events ? ndcg / events : 0.0, percentile(sorted, 50), opt.report.c_str());
  for (Slot& slot : slots) fmrl_session_free(slot.session);
  fmrl_close(rec);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
