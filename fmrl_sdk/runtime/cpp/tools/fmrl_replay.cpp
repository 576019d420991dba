// fmrl_replay: the C++ counterpart of `fmrl-sdk simulate` (fmrl_sdk/simulate/replay.py), on the C ABI.
//
//   fmrl_replay --bundle B --stream S.jsonl --report R.json [--k 10] [--out RECS.jsonl] [--exclude-seen]
//               [--strict] [--threads N] [--save-state USER=FILE]... [--load-state USER=FILE]...
//               [--score-from UNIX_OR_ISO] [--window SPAN]
//
// For every valid event of user u: recommend k items from u's session (cold start for a new user), score
// them against the event's item (online HitRate@k / NDCG@k), then observe the item. Bad lines are counted
// by kind exactly as simulate counts them (fmrl_sdk/simulate/events.py; a line longer than
// FMRL_MAX_JSONL_LINE_BYTES is invalid_json, never held whole, as replay.py read_line). --load-state starts a
// user from a saved session (Python's Session.to_bytes() or --save-state's); --save-state writes a user's
// session at the end. Bad usage or a bad line under --strict: one line "error: ..." on stderr, exit 2.
//
// The report's time-aware keys ("split", "headline", "phases", "out_of_sample") are simulate's
// (fmrl_sdk/simulate/scoring.py): the cut is --score-from (a unix timestamp or an ISO date, as
// fmrl_sdk/data/split.py parse_cut reads it) or the manifest's "split"; --window (1d, 7d, 12h, 30m, 2w,
// 3600s or N events; default 7d) needs a time cut. Under a time cut an event without "ts" is a bad line
// (missing_ts). There is no --items here: "new_item_events" counts skipped out-of-sample unknown items.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "fmrl_runtime.h"
#include "ids.hpp"
#include "nlohmann_json/json.hpp"
#include "paths.hpp"

namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

const char* const kBadKinds[] = {"invalid_json", "duplicate_key", "not_object", "missing_field", "wrong_type",
                                 "unknown_item", "ts_backwards", "missing_ts"};
enum BadKind { kInvalidJson, kDuplicateKey, kNotObject, kMissingField, kWrongType, kUnknownItem, kTsBackwards,
               kMissingTs, kBadKindCount };
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
  // fmrl_sdk/ids.py's rule: the type, then ids.hpp on the string or the integer's digits; user first
  const std::pair<const char*, const Field*> ids[] = {{"'user' ", &user}, {"'item' ", &item}};
  for (const auto& [name, id] : ids) {
    if (id->kind != Field::kString && id->kind != Field::kInt)
      return {kWrongType, std::string(name) + "must be a string or an integer, got " + type_name(*id)};
    const std::string problem = fmrl::id_problem(id->text);
    if (!problem.empty()) return {kWrongType, name + problem};
  }
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

// events.parse_line + check_fields on one raw line (a leading BOM ignored): false for a blank line; else true,
// with the line's problem (kind kBadKindCount when it is an event, its fields then in `parsed`).
bool classify(const std::string& raw, LineFields& parsed, std::string& rewritten, std::vector<Literal>& literals,
              Bad& problem) {
  const size_t skip = raw.compare(0, 3, "\xEF\xBB\xBF") == 0 ? 3 : 0;
  parsed.reset(nullptr);
  bool ok = Json::sax_parse(raw.begin() + skip, raw.end(), &parsed);
  if (!ok && parsed.outcome == LineFields::kSyntax && rewrite_python_numbers(raw.substr(skip), rewritten, literals)) {
    const std::string first_error = parsed.error;
    parsed.reset(&literals);
    ok = Json::sax_parse(rewritten.begin(), rewritten.end(), &parsed);
    if (!ok && parsed.outcome == LineFields::kSyntax) parsed.error = first_error;
  }
  if (ok && raw.find('\0') != std::string::npos) {
    // nlohmann reads a NUL byte as the end of the input; Python's json sees data after the value
    problem = {kInvalidJson, "invalid JSON (Extra data)"};
  } else if (ok) {
    problem = check_fields(parsed);
  } else if (parsed.outcome == LineFields::kSyntax && only_ascii_whitespace(raw.substr(skip))) {
    return false;
  } else if (parsed.outcome == LineFields::kDuplicate) {
    problem = {kDuplicateKey, "duplicate key " + parsed.error};
  } else {
    problem = {kInvalidJson, parsed.outcome == LineFields::kTooDeep ? std::string("invalid JSON (nested too deeply)")
                                                                      : "invalid JSON (" + parsed.error + ")"};
  }
  return true;
}

// ---- reading the stream: replay.py read_line -------------------------------------------------------

constexpr size_t kLineKept = FMRL_MAX_JSONL_LINE_BYTES + 2;  // enough to tell a line over the limit

// The stream's lines, each ('\n' included) into `line` by next(), false at the end. Of a line longer than
// kLineKept only the first kLineKept bytes are kept (the buffer never grows past them): the rest is read in
// blocks and dropped.
class LineReader {
 public:
  explicit LineReader(FILE* in) : in_(in), block_(1 << 16) {}
  bool next(std::string& line) {
    line.clear();
    bool any = false;
    for (;;) {
      if (pos_ == end_) {
        pos_ = 0, end_ = std::fread(block_.data(), 1, block_.size(), in_);
        if (end_ == 0) return any;
      }
      const char* start = block_.data() + pos_;
      const char* newline = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
      const size_t n = newline ? static_cast<size_t>(newline - start) + 1 : end_ - pos_;
      const size_t keep = std::min(n, kLineKept - line.size());
      if (line.size() + keep > line.capacity()) {  // grow by doubling, then to exactly kLineKept (a request
        const size_t want = std::max(2 * line.capacity(), line.size() + keep);  // under twice the capacity
        line.reserve(2 * want > kLineKept ? kLineKept : want);  // would be doubled past it by libstdc++)
      }
      line.append(start, keep);
      pos_ += n, any = true;
      if (newline) return true;
    }
  }

 private:
  FILE* in_;
  std::vector<char> block_;
  size_t pos_ = 0, end_ = 0;
};

// A line (as LineReader keeps it) longer than FMRL_MAX_JSONL_LINE_BYTES, its "\n" or "\r\n" not counted.
bool too_long(const std::string& line) {
  size_t size = line.size();
  if (size && line[size - 1] == '\n') size -= size >= 2 && line[size - 2] == '\r' ? 2 : 1;
  return size > FMRL_MAX_JSONL_LINE_BYTES;
}

// ---- files ---------------------------------------------------------------------------------------

std::string parent_of(const std::string& path) {  // str(Path(path).parent) for a normalised path
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Python's Path(path).resolve() (not strict): symbolic links followed as far as they lead, dangling ones
// included; the missing tail of the path is appended as written.
std::string resolve_loose(const std::string& path, int depth = 0) {
  if (char* real = ::realpath(path.c_str(), nullptr)) {
    std::string out(real);
    std::free(real);
    return out;
  }
  const std::string p = fmrl::path_normalise(path);
  if (depth > 40 || p == "/" || p == ".") return p;
  struct stat st;
  if (::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {  // a dangling link: where it points
    std::string target(static_cast<size_t>(st.st_size > 0 ? st.st_size : 4096), '\0');
    const ssize_t n = ::readlink(p.c_str(), &target[0], target.size());
    if (n > 0) {
      target.resize(static_cast<size_t>(n));
      return resolve_loose(target[0] == '/' ? target : parent_of(p) + "/" + target, depth + 1);
    }
  }
  const std::string parent = resolve_loose(parent_of(p), depth + 1);
  return (parent == "/" ? "" : parent) + "/" + base_of(p);
}

// fileio.check_outputs_are_not_inputs: the same path, through symbolic links, or the same file (device and
// inode: a hard link).
bool same_file(const std::string& a, const std::string& b) {
  if (resolve_loose(a) == resolve_loose(b)) return true;
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

using Labelled = std::vector<std::pair<std::string, std::string>>;  // (label as the user knows it, path)

// Refuses (one line, as simulate words it) an output that is an input or another output, before anything
// is read or written.
void check_outputs_are_not_inputs(const Labelled& outputs, const Labelled& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    Labelled others(outputs.begin() + static_cast<long>(i) + 1, outputs.end());
    others.insert(others.end(), inputs.begin(), inputs.end());
    for (const auto& [label, source] : others)
      if (same_file(outputs[i].second, source))
        throw Usage(fmrl::path_normalise(outputs[i].second) + ": " + outputs[i].first + " is " + label + " (" +
                    fmrl::path_normalise(source) + "); writing it would destroy the input: choose another path");
  }
}

// An output's folder must exist and be writable, and the output must not be a folder: checked before the
// replay, so that a long run does not fail at its end.
void check_writable(const std::string& path) {
  const std::string name = fmrl::path_normalise(path), folder = parent_of(name);
  struct stat st;
  if (::stat(folder.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Usage(name + ": cannot write (folder " + folder + " not found)");
  if (::access(folder.c_str(), W_OK | X_OK) != 0)
    throw Usage(name + ": cannot write (folder " + folder + " is not writable)");
  if (::stat(name.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) throw Usage(name + ": cannot write (is a directory)");
}

// An exclusive lock beside an output, `.NAME.lock` (the one simulate takes for its --out), held until
// unlock_beside or the process's exit; a second writer of the same output is refused with the holder's pid.
std::string lock_path_of(const std::string& name) { return parent_of(name) + "/." + base_of(name) + ".lock"; }

int lock_beside(const std::string& path, const char* program) {
  const std::string name = fmrl::path_normalise(path);
  const std::string lock_path = lock_path_of(name);
  int fd = -1;
  for (;;) {
    fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) throw Usage(lock_path + ": cannot write (" + std::strerror(errno) + ")");
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      char buf[128] = {};
      const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
      ::close(fd);
      std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
      const size_t space = holder.find(' ');
      const std::string pid = holder.substr(0, std::min(space, holder.find('\n')));
      std::string who = space == std::string::npos ? "simulate" : holder.substr(space + 1);
      while (!who.empty() && std::isspace(static_cast<unsigned char>(who.back()))) who.pop_back();
      throw Usage(name + ": in use by another " + (who.empty() ? std::string("simulate") : who) + " (pid " +
                  (pid.empty() ? std::string("?") : pid) + ")");
    }
    struct stat held, named;  // the holder before us may have removed the file after our open: lock anew
    if (::fstat(fd, &held) == 0 && ::stat(lock_path.c_str(), &named) == 0 && held.st_dev == named.st_dev &&
        held.st_ino == named.st_ino)
      break;
    ::close(fd);
  }
  const std::string me = std::to_string(::getpid()) + " " + program + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) < 0) { /* the pid is informative only */ }
  return fd;
}

void unlock_beside(const std::string& name, int fd) {
  ::unlink(lock_path_of(name).c_str());  // while still held: a waiting writer then locks a fresh file
  ::close(fd);
}

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

// ---- time-aware scoring (fmrl_sdk/simulate/scoring.py, fmrl_sdk/data/split.py) ---------------------

bool py_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r') || (c >= '\x1c' && c <= '\x1f'); }

std::string py_strip(const std::string& text) {  // str.strip() (ASCII whitespace)
  size_t a = 0, b = text.size();
  while (a < b && py_space(text[a])) ++a;
  while (b > a && py_space(text[b - 1])) --b;
  return text.substr(a, b - a);
}

std::string py_repr(const std::string& text) {  // repr() of a str (non-ASCII bytes as they are)
  const char quote = text.find('\'') != std::string::npos && text.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const unsigned char c : text) {
    if (c == '\\' || c == static_cast<unsigned char>(quote)) out += '\\', out += static_cast<char>(c);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += static_cast<char>(c);
  }
  return out + quote;
}

std::string py_float_repr(double v) {  // repr() of a float
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  int p = 1;
  for (; p < 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::snprintf(buf, sizeof buf, "%.*e", p - 1, v);
  std::string mant(buf), digits;
  const size_t e = mant.find('e');
  const int exp10 = std::atoi(mant.c_str() + e + 1);
  const bool neg = mant[0] == '-';
  for (size_t i = 0; i < e; ++i)
    if (mant[i] >= '0' && mant[i] <= '9') digits += mant[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int decpt = exp10 + 1;
  std::string out = neg ? "-" : "";
  if (decpt > 16 || decpt < -3) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    std::snprintf(buf, sizeof buf, "e%c%02d", exp10 < 0 ? '-' : '+', std::abs(exp10));
    return out + buf;
  }
  if (decpt <= 0) return out + "0." + std::string(-decpt, '0') + digits;
  if (static_cast<size_t>(decpt) >= digits.size()) return out + digits + std::string(decpt - digits.size(), '0') + ".0";
  return out + digits.substr(0, decpt) + "." + digits.substr(decpt);
}

// Python float(text) for a stripped str: decimal literals (underscores between digits), inf, nan.
bool py_float(const std::string& text, double& out) {
  std::string plain;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '_') {
      plain += text[i];
      continue;
    }
    if (i == 0 || i + 1 == text.size() || !std::isdigit(static_cast<unsigned char>(text[i - 1])) ||
        !std::isdigit(static_cast<unsigned char>(text[i + 1])))
      return false;
  }
  size_t i = plain[0] == '+' || plain[0] == '-' ? 1 : 0;
  std::string word = plain.substr(i);
  for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (word == "inf" || word == "infinity" || word == "nan") {
    out = word == "nan" ? std::nan("") : HUGE_VAL;
    if (plain[0] == '-') out = -out;
    return true;
  }
  size_t digits = 0;
  while (i < plain.size() && std::isdigit(static_cast<unsigned char>(plain[i]))) ++i, ++digits;
  if (i < plain.size() && plain[i] == '.') {
    ++i;
    while (i < plain.size() && std::isdigit(static_cast<unsigned char>(plain[i]))) ++i, ++digits;
  }
  if (!digits) return false;
  if (i < plain.size() && (plain[i] == 'e' || plain[i] == 'E')) {
    ++i;
    if (i < plain.size() && (plain[i] == '+' || plain[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < plain.size() && std::isdigit(static_cast<unsigned char>(plain[i]))) ++i, ++exp_digits;
    if (!exp_digits) return false;
  }
  if (i != plain.size()) return false;
  out = std::strtod(plain.c_str(), nullptr);
  return true;
}

int64_t days_from_civil(int64_t y, int m, int d) {  // days since 1970-01-01 (proleptic Gregorian)
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() for the common ISO forms: YYYY-MM-DD or
// YYYYMMDD, then optionally one separator character and HH[:MM[:SS[.ffffff]]] or HH[MM[SS[.ffffff]]], then
// optionally an offset (Z, +HH, +HH:MM, +HHMM, +HH:MM:SS); naive date-times are UTC.
bool parse_iso(const std::string& text, double& out) {
  size_t i = 0;
  auto num = [&](size_t n, int& v) {
    if (i + n > text.size()) return false;
    v = 0;
    for (size_t j = 0; j < n; ++j) {
      if (!std::isdigit(static_cast<unsigned char>(text[i + j]))) return false;
      v = v * 10 + (text[i + j] - '0');
    }
    i += n;
    return true;
  };
  int year, month, day;
  if (!num(4, year)) return false;
  const bool extended = i < text.size() && text[i] == '-';
  if (extended) ++i;
  if (!num(2, month)) return false;
  if (extended && (i >= text.size() || text[i++] != '-')) return false;
  if (!num(2, day)) return false;
  static const int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  if (year < 1 || month < 1 || month > 12 || day < 1 || day > kDays[month - 1] + (month == 2 && leap)) return false;
  int hour = 0, minute = 0, second = 0, micro = 0, offset = 0;
  if (i < text.size()) {
    ++i;  // the separator: any one character
    if (!num(2, hour)) return false;
    auto part = [&](int& v) {  // ":MM" (extended) or "MM" (basic)
      if (i < text.size() && text[i] == ':') ++i;
      return num(2, v);
    };
    if (i < text.size() && (text[i] == ':' || std::isdigit(static_cast<unsigned char>(text[i])))) {
      if (!part(minute)) return false;
      if (i < text.size() && (text[i] == ':' || std::isdigit(static_cast<unsigned char>(text[i])))) {
        if (!part(second)) return false;
        if (i < text.size() && (text[i] == '.' || text[i] == ',')) {
          ++i;
          size_t n = 0;
          for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i, ++n)
            if (n < 6) micro = micro * 10 + (text[i] - '0');
          if (!n) return false;
          for (; n < 6; ++n) micro *= 10;
        }
      }
    }
    while (i < text.size() && text[i] == ' ') ++i;
    if (i < text.size()) {
      if (text[i] == 'Z') {
        ++i;
      } else if (text[i] == '+' || text[i] == '-') {
        const int sign = text[i++] == '-' ? -1 : 1;
        int oh = 0, om = 0, os = 0;
        if (!num(2, oh)) return false;
        if (i < text.size() && !part(om)) return false;
        if (i < text.size() && !part(os)) return false;
        if (oh > 23 || om > 59 || os > 59) return false;
        offset = sign * (oh * 3600 + om * 60 + os);
      }
      if (i != text.size()) return false;
    }
    if (hour > 23 || minute > 59 || second > 59) return false;
  }
  const int64_t seconds = days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset;
  out = static_cast<double>(seconds * 1000000 + micro) / 1e6;  // timedelta.total_seconds()
  return true;
}

// split.iso: datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") with "Z".
std::string iso(double ts) {
  double whole;
  double frac = std::nearbyint(std::modf(ts, &whole) * 1e6);  // microseconds, rounded half to even
  if (frac >= 1e6) whole += 1.0;
  else if (frac < 0) whole -= 1.0;
  const int64_t secs = static_cast<int64_t>(whole);
  int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0) rem += 86400, --days;
  // civil_from_days
  const int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097, doe = z - era * 146097;
  const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
  const int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04lld-%02lld-%02lldT%02lld:%02lld:%02lldZ", static_cast<long long>(y),
                static_cast<long long>(m), static_cast<long long>(d), static_cast<long long>(rem / 3600),
                static_cast<long long>(rem / 60 % 60), static_cast<long long>(rem % 60));
  return buf;
}

struct Cut {  // scoring.Cut
  std::string kind = "unknown", source = "manifest";
  bool has_val_from = false;
  double val_from = 0, test_from = 0;
  double train_end() const { return has_val_from ? val_from : test_from; }
  OrderedJson to_json() const {
    OrderedJson out = OrderedJson::object();
    out["kind"] = kind;
    out["source"] = source;
    if (kind == "time") {
      out["val_from"] = has_val_from ? OrderedJson(val_from) : OrderedJson();
      out["test_from"] = test_from;
      out["test_from_iso"] = iso(test_from);
      out["val_from_iso"] = has_val_from ? OrderedJson(iso(val_from)) : OrderedJson();
    }
    return out;
  }
};

// scoring.cut_for with --score-from given: split.parse_cut(value, "--score-from") restricted to kind "time".
Cut cut_from_flag(const std::string& value) {
  const std::string what = "--score-from";
  const std::string text = py_strip(value);
  double number;
  if (!py_float(text, number)) {
    std::string replaced;
    for (const char c : text) replaced += c == 'Z' ? std::string("+00:00") : std::string(1, c);
    if (!parse_iso(replaced, number))
      throw Usage(what + " = " + py_repr(value) + ": expected a unix timestamp, an ISO date such as 2003-01-01, or a "
                  "fraction of events such as 0.8");
    Cut cut;
    cut.kind = "time", cut.source = what, cut.test_from = number;
    return cut;
  }
  if (!std::isfinite(number))
    throw Usage(what + " = " + py_float_repr(number) + ": expected a unix timestamp, an ISO date or a fraction in (0, 1)");
  if (0 < number && number < 1)
    throw Usage(what + " " + py_repr(value) + ": expected a unix timestamp or an ISO date");
  if (number < 1000)
    throw Usage(what + " = " + py_float_repr(number) + ": a fraction must be in (0, 1) and a unix timestamp >= 1000");
  if (number >= 253402300800.0)  // after 9999-12-31 (simulate fails there: Python's datetime ends with that year)
    throw Usage(what + " = " + py_float_repr(number) + ": a unix timestamp after the year 9999");
  Cut cut;
  cut.kind = "time", cut.source = what, cut.test_from = number;
  return cut;
}

// scoring.cut_for without --score-from: the manifest's "split".
Cut cut_from_manifest(const Json& manifest) {
  Cut cut;
  const auto split = manifest.find("split");
  if (split == manifest.end() || !split->is_object()) return cut;
  const auto kind = split->find("kind");
  if (kind == split->end() || !kind->is_string()) return cut;
  if (*kind == "time") {
    auto number = [&](const char* name) {
      const auto v = split->find(name);
      double x;
      if (v != split->end() && v->is_number()) return v->get<double>();
      if (v != split->end() && v->is_string() && py_float(py_strip(v->get<std::string>()), x)) return x;
      throw Usage(std::string("the bundle's manifest: split.") + name + " is not a number");
    };
    cut.kind = "time", cut.has_val_from = true;
    cut.val_from = number("val_from"), cut.test_from = number("test_from");
  } else if (*kind == "leave-one-out") {
    cut.kind = "leave-one-out";
  }
  return cut;
}

struct Window {  // scoring.Window
  std::string text;
  double seconds = 0;
  int64_t events = 0;
};

Window parse_window(const std::string& value) {  // scoring.parse_window
  const std::string text = py_strip(value);
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  const bool number = digits && text[0] != '0';
  Window w;
  w.text = text;
  if (number && digits == text.size()) {
    errno = 0;
    const long long n = std::strtoll(text.c_str(), nullptr, 10);
    w.events = errno == ERANGE ? INT64_MAX : n;
    return w;
  }
  static const std::string kUnits = "smhdw";
  static const double kSeconds[] = {1, 60, 3600, 86400, 7 * 86400};
  if (number && digits + 1 == text.size() && kUnits.find(text.back()) != std::string::npos) {
    w.seconds = std::strtod(text.substr(0, digits).c_str(), nullptr) * kSeconds[kUnits.find(text.back())];
    return w;
  }
  throw Usage("--window " + py_repr(text) + ": expected a span such as 1d, 7d, 12h, 30m, 2w or a number of events");
}

double py_floordiv(double vx, double wx) {  // Python float // float
  double mod = std::fmod(vx, wx);
  double div = (vx - mod) / wx;
  if (mod && ((wx < 0) != (mod < 0))) div -= 1.0;
  if (div) {
    double floordiv = std::floor(div);
    if (div - floordiv > 0.5) floordiv += 1.0;
    return floordiv;
  }
  return std::copysign(0.0, vx / wx);
}

// scoring.popularity_rank: items counted more, then equal counts with a lower index, come first.
int64_t popularity_rank(const std::vector<int64_t>& counts, int64_t index) {
  const int64_t c = counts[index];
  int64_t rank = 0;
  for (int64_t i = 1; i < index; ++i) rank += counts[i] >= c;
  for (size_t i = static_cast<size_t>(index) + 1; i < counts.size(); ++i) rank += counts[i] > c;
  return rank;
}

// JSON of a ts as Python writes it: an int stays an int.
OrderedJson ts_json(const Field& ts) {
  if (ts.kind == Field::kInt && ts.exact_int) return OrderedJson(ts.integer);
  if (ts.kind == Field::kInt && !ts.text.empty() && ts.text[0] != '-' && ts.number < 18446744073709551616.0 &&
      ts.text.size() <= 20) {
    errno = 0;
    const unsigned long long u = std::strtoull(ts.text.c_str(), nullptr, 10);
    if (errno == 0) return OrderedJson(u);
  }
  return OrderedJson(ts.number);
}

// scoring.Scoring: the time-aware part of the report, event by event.
struct Scoring {
  struct Acc {
    long long events = 0, hits = 0;
    double ndcg = 0.0;
  };
  struct Row {
    long long events = 0, hits = 0, pop_hits = 0, trail_hits = 0;
    double ndcg = 0.0, pop_ndcg = 0.0, trail_ndcg = 0.0;
    OrderedJson first, last;
  };
  enum Phase { kInSample, kValidation, kOutOfSample };
  Cut cut;
  int k;
  int64_t num_items;
  Window window;
  bool has_window;
  std::vector<double> gain;
  Acc phases[3], known_user, new_user, known_item, new_item;
  long long before_hits = 0, trail_hits = 0, skipped = 0;
  double before_ndcg = 0.0, trail_ndcg = 0.0;
  std::map<long long, Row> windows;
  std::vector<int64_t> counts, trail_counts, frozen;
  std::deque<std::pair<double, int64_t>> trail;  // (ts or event number, index) inside the trailing window
  long long oos_events = 0, timed_events = 0;

  Scoring(const Cut& c, int k_, int64_t items, int64_t item_count, const Window& w, bool has_w)
      : cut(c), k(k_), num_items(items), window(w), has_window(has_w), gain(k_),
        counts(item_count + 1), trail_counts(item_count + 1) {
    for (int r = 0; r < k; ++r) gain[r] = 1.0 / std::log2(r + 2.0);
  }
  std::pair<long long, double> hit(int64_t rank) const {
    return rank >= 0 && rank < k ? std::make_pair(1LL, gain[rank]) : std::make_pair(0LL, 0.0);
  }
  Phase phase(double ts) const {
    if (ts >= cut.test_from) return kOutOfSample;
    if (cut.has_val_from && ts >= cut.val_from) return kValidation;
    return kInSample;
  }
  std::pair<long long, double> popularity_before(int64_t index) { return hit(popularity_rank(counts, index)); }
  void count(int64_t index) { ++counts[index]; }

  void timed_event(double ts, const Field& ts_field, int64_t index, int64_t rank, bool known) {
    const Phase p = phase(ts);
    const auto [h, g] = hit(rank);
    Acc& acc = phases[p];
    ++acc.events, acc.hits += h, acc.ndcg += g;
    if (p != kOutOfSample) {
      ++counts[index];
    } else {
      if (frozen.empty()) {  // the before-cut ranks, fixed at the first out-of-sample event
        std::vector<int64_t> order(counts.size() - 1);
        for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i) + 1;
        std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
        frozen.assign(counts.size(), 0);
        for (size_t r = 0; r < order.size(); ++r) frozen[order[r]] = static_cast<int64_t>(r);
      }
      const auto pop = hit(frozen[index]);
      expire(ts);
      const auto tr = hit(popularity_rank(trail_counts, index));
      before_hits += pop.first, before_ndcg += pop.second;
      trail_hits += tr.first, trail_ndcg += tr.second;
      for (Acc* group : {known ? &known_user : &new_user, index <= num_items ? &known_item : &new_item})
        ++group->events, group->hits += h, group->ndcg += g;
      if (has_window) {
        const long long w = window.events ? oos_events / window.events
                                          : static_cast<long long>(py_floordiv(ts - cut.test_from, window.seconds));
        auto found = windows.find(w);
        if (found == windows.end()) {
          found = windows.emplace(w, Row()).first;
          found->second.first = ts_json(ts_field);
        }
        Row& row = found->second;
        ++row.events, row.hits += h, row.ndcg += g, row.pop_hits += pop.first, row.pop_ndcg += pop.second;
        row.trail_hits += tr.first, row.trail_ndcg += tr.second;
        row.last = ts_json(ts_field);
      }
      ++oos_events;
    }
    ++timed_events;
    trail.emplace_back(has_window && window.events ? static_cast<double>(timed_events) : ts, index);
    ++trail_counts[index];
  }

  void expire(double ts) {  // drop events that left the trailing window
    const Window w = has_window ? window : parse_window("7d");
    if (w.events) {
      while (!trail.empty() && trail.front().first <= static_cast<double>(timed_events - w.events))
        --trail_counts[trail.front().second], trail.pop_front();
    } else {
      while (!trail.empty() && trail.front().first < ts - w.seconds)
        --trail_counts[trail.front().second], trail.pop_front();
    }
  }

  OrderedJson metrics(long long events, double hits, double ndcg) const {
    OrderedJson out = OrderedJson::object();
    out["events"] = events;
    out["HitRate@" + std::to_string(k)] = events ? hits / events : 0.0;
    out["NDCG@" + std::to_string(k)] = events ? ndcg / events : 0.0;
    return out;
  }
  OrderedJson metrics(const Acc& a) const { return metrics(a.events, static_cast<double>(a.hits), a.ndcg); }

  // Scoring.report: "split", "headline", "phases", "out_of_sample", into `report` in that order.
  void report(OrderedJson& report, const OrderedJson& online, const OrderedJson& last_event, long long users,
              double last_pop_hit, double last_pop_ndcg) const {
    const std::string hr = "HitRate@" + std::to_string(k), nd = "NDCG@" + std::to_string(k);
    OrderedJson headline = OrderedJson::object(), phases_json = OrderedJson::object(), out = OrderedJson::object();
    auto lift = [&](const OrderedJson& model, const OrderedJson& base) {
      OrderedJson l = OrderedJson::object();
      for (const std::string& m : {hr, nd}) {
        const double b = base[m].get<double>();
        l[m] = b != 0.0 ? OrderedJson(model[m].get<double>() / b) : OrderedJson();
      }
      return l;
    };
    if (cut.kind == "time") {
      static const char* const kPhases[] = {"in_sample", "validation", "out_of_sample"};
      for (int p = 0; p < 3; ++p) phases_json[kPhases[p]] = metrics(phases[p]);
      const OrderedJson& oos = phases_json["out_of_sample"];
      const long long n = oos["events"].get<long long>();
      OrderedJson base = OrderedJson::object();
      base["before_cut"] = metrics(n, static_cast<double>(before_hits), before_ndcg);
      base["trailing"] = metrics(n, static_cast<double>(trail_hits), trail_ndcg);
      base["trailing"]["span"] = has_window ? window.text : std::string("7d");
      out["by_user"] = {{"known", metrics(known_user)}, {"new", metrics(new_user)}};
      out["by_item"] = {{"known", metrics(known_item)}, {"new", metrics(new_item)}};
      out["new_item_events"] = {{"skipped", skipped}, {"added", 0}};
      out["popularity"] = base;
      OrderedJson lifts = OrderedJson::object();
      lifts["before_cut"] = lift(oos, base["before_cut"]);
      lifts["trailing"] = lift(oos, base["trailing"]);
      out["lift"] = lifts;
      OrderedJson rows = OrderedJson::array();
      for (const auto& [w, row] : windows) {
        OrderedJson r = OrderedJson::object();
        const double e = static_cast<double>(row.events);
        r["window"] = w;
        r["first_ts"] = row.first;
        r["last_ts"] = row.last;
        r["events"] = row.events;
        r[hr] = row.hits / e;
        r[nd] = row.ndcg / e;
        r["popularity_" + hr] = row.pop_hits / e;
        r["trailing_" + hr] = row.trail_hits / e;
        if (window.seconds) r["from"] = iso(cut.test_from + static_cast<double>(w) * window.seconds);
        rows.push_back(r);
      }
      out["windows"] = rows;
      out["window"] = has_window ? OrderedJson(window.text) : OrderedJson();
      headline["label"] = "out-of-sample: events from " + iso(cut.test_from) + " (" + fmrl::thousands(n) + ")";
      for (const auto& [key, value] : oos.items()) headline[key] = value;
    } else if (cut.kind == "leave-one-out") {
      phases_json["all_events_in_sample"] = online;
      OrderedJson pop = OrderedJson::object();
      pop["events"] = users;
      pop[hr] = users ? last_pop_hit / static_cast<double>(users) : 0.0;
      pop[nd] = users ? last_pop_ndcg / static_cast<double>(users) : 0.0;
      out["popularity"] = {{"before_event", pop}};
      out["lift"] = {{"before_event", lift(last_event, pop)}};
      headline["label"] = "out-of-sample: each user's last event (" + fmrl::thousands(users) + ")";
      headline["events"] = users;
      for (const auto& [key, value] : last_event.items()) headline[key] = value;
    } else {
      phases_json["all_events_unknown"] = online;
      headline["label"] = "all events; in-sample status unknown (the bundle records no split: pass --score-from)";
      for (const auto& [key, value] : online.items()) headline[key] = value;
    }
    report["split"] = cut.to_json();
    report["headline"] = headline;
    report["phases"] = phases_json;
    report["out_of_sample"] = out;
  }
};

// ---- the replay ----------------------------------------------------------------------------------

struct Slot {
  fmrl_session* session = nullptr;
  Field last_ts;  // kAbsent until a ts is seen
  double last_hit = 0.0, last_ndcg = 0.0;
  bool trained = false;                          // time cut: had an event in the training period
  double last_pop_hit = 0.0, last_pop_ndcg = 0.0;  // the popularity baseline on the last event
};

struct Options {
  std::string bundle, stream, report, out, score_from, window;
  bool has_score_from = false, has_window = false;
  int k = 10, threads = 0;  // k: 0 when --k is beyond int (k_text says what it was)
  std::string k_text = "10";  // --k as Python prints the int it reads
  bool exclude_seen = false, strict = false, quiet = false;
  std::vector<std::pair<std::string, std::string>> save, load;
};

// Python int(text) for a str, as simulate's --k is read: surrounding whitespace, a sign, digits with single
// underscores between them, any length. `canonical`: the value's decimal spelling (what Python prints).
bool py_int(const std::string& text, std::string& canonical) {
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  size_t a = 0, b = text.size();
  while (a < b && std::isspace(static_cast<unsigned char>(text[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(text[b - 1]))) --b;
  bool negative = false;
  if (a < b && (text[a] == '+' || text[a] == '-')) negative = text[a++] == '-';
  std::string digits;
  for (size_t i = a; i < b; ++i) {
    if (digit(text[i])) digits += text[i];
    else if (!(text[i] == '_' && i > a && i + 1 < b && digit(text[i - 1]) && digit(text[i + 1]))) return false;
  }
  if (digits.empty()) return false;
  const size_t first = std::min(digits.find_first_not_of('0'), digits.size() - 1);
  digits.erase(0, first);
  canonical = (negative && digits != "0" ? "-" : "") + digits;
  return true;
}

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
    auto integer = [&](const std::string& v, std::string* canonical = nullptr) {
      std::string text;  // Python int(v), any size; k out of range is refused later with simulate's words
      if (!py_int(v, text)) throw Usage(a + " " + v + ": expected an integer");
      if (canonical) *canonical = text;
      const size_t digits = text.size() - (text[0] == '-');
      if (digits > 9) {
        if (canonical) return 0;
        throw Usage(a + " " + text + ": out of range");
      }
      return std::stoi(text);
    };
    if (a == "--bundle") o.bundle = value();
    else if (a == "--stream") o.stream = value();
    else if (a == "--report") o.report = value();
    else if (a == "--out") o.out = value();
    else if (a == "--k") o.k = integer(value(), &o.k_text);
    else if (a == "--threads") o.threads = integer(value());
    else if (a == "--exclude-seen") o.exclude_seen = true;
    else if (a == "--strict") o.strict = true;
    else if (a == "--quiet") o.quiet = true;
    else if (a == "--score-from") o.score_from = value(), o.has_score_from = true;
    else if (a == "--window") o.window = value(), o.has_window = true;
    else if (a == "--save-state") o.save.push_back(user_file(a, value()));
    else if (a == "--load-state") o.load.push_back(user_file(a, value()));
    else if (a == "--help" || a == "-h") {
      std::printf("usage: fmrl_replay --bundle B --stream S.jsonl --report R.json [--k 10] [--out RECS.jsonl]\n"
                  "       [--exclude-seen] [--strict] [--threads N] [--save-state USER=FILE]... "
                  "[--load-state USER=FILE]...\n"
                  "       [--score-from UNIX_OR_ISO] [--window 1d|7d|12h|30m|2w|3600s|N]\n");
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
  // simulate's order: outputs against inputs (and each other) before anything else; here also their folders
  {
    const std::string bundle_name = fmrl::path_normalise(opt.bundle);
    Labelled outputs, inputs = {{"the stream", opt.stream}};
    if (!opt.out.empty()) outputs.emplace_back("--out", opt.out);
    outputs.emplace_back("--report", opt.report);
    for (const auto& [user, file] : opt.save) outputs.emplace_back("--save-state " + user, file);
    struct stat st;
    if (::stat(bundle_name.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {  // a directory bundle: its files
      const std::string manifest_path = fmrl::path_join(bundle_name, "manifest.json");
      inputs.emplace_back("the bundle's manifest.json", manifest_path);
      const OrderedJson manifest = OrderedJson::parse(read_all(manifest_path));
      if (manifest.contains("files") && manifest["files"].is_object())
        for (const auto& file : manifest["files"].items())
          inputs.emplace_back("the bundle's " + file.key(), fmrl::path_join(bundle_name, file.key()));
    } else {
      inputs.emplace_back("the bundle", opt.bundle);
    }
    for (const auto& [user, file] : opt.load) inputs.emplace_back("--load-state " + user, file);
    check_outputs_are_not_inputs(outputs, inputs);
    for (const auto& output : outputs) check_writable(output.second);
  }
  // scoring.cut_for and the window, in simulate's order
  const Cut cut = opt.has_score_from
                      ? cut_from_flag(opt.score_from)
                      : cut_from_manifest(Json::parse(read_all(fmrl::path_join(fmrl::path_normalise(opt.bundle),
                                                                               "manifest.json"))));
  if (opt.has_window && cut.kind != "time")
    throw Usage("--window: needs a time cut (this bundle's split is " + cut.kind + "; pass --score-from)");
  const bool timed = cut.kind == "time";
  const Window window = timed ? parse_window(opt.has_window ? opt.window : "7d") : Window();
  const std::string stream_name = fmrl::path_normalise(opt.stream);
  {
    struct stat st;
    if (::stat(opt.stream.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) throw Usage(stream_name + ": stream not found");
  }
  const int k_max = fmrl_k_max(rec);
  if (opt.k < 1 || opt.k > k_max)
    throw Usage("--k " + opt.k_text + ": must be in [1, " + std::to_string(k_max) + "] (the bundle's k_max)");
  Scoring scoring(cut, opt.k, fmrl_num_items(rec), fmrl_item_count(rec), window, timed);
  // --out, as simulate writes it: under an exclusive lock beside it, into `.NAME.partial`, renamed to NAME
  // when the replay completes (an existing NAME is never truncated in place)
  const std::string out_name = opt.out.empty() ? std::string() : fmrl::path_normalise(opt.out);
  const std::string partial = out_name.empty() ? std::string() : parent_of(out_name) + "/." + base_of(out_name) + ".partial";
  const int out_lock = out_name.empty() ? -1 : lock_beside(out_name, "fmrl_replay");
  FILE* in = std::fopen(opt.stream.c_str(), "rb");
  if (!in) throw Usage(stream_name + ": stream not found");
  FILE* out = nullptr;
  if (!opt.out.empty() && !(out = std::fopen(partial.c_str(), "wb")))
    throw Usage(out_name + ": cannot write (" + std::strerror(errno) + ")");

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
  std::string raw, rewritten;
  std::vector<Literal> literals;
  LineReader reader(in);
  const std::string line_too_long = "line longer than " + fmrl::thousands(FMRL_MAX_JSONL_LINE_BYTES) + " bytes";
  const auto started = std::chrono::steady_clock::now();
  while (reader.next(raw)) {
    ++lines;
    Bad problem{kBadKindCount, ""};
    if (too_long(raw)) {
      parsed.reset(nullptr);
      problem = {kInvalidJson, line_too_long};
    } else if (!classify(raw, parsed, rewritten, literals, problem)) {
      continue;  // a blank line
    }
    int64_t index = 0;
    Slot* slot = nullptr;
    std::string user;
    const Field &user_field = parsed.fields[0], &item_field = parsed.fields[1], &ts = parsed.fields[2];
    const bool has_ts = ts.kind == Field::kInt || ts.kind == Field::kFloat;
    if (problem.kind == kBadKindCount && timed && !has_ts)
      problem = {kMissingTs, "no 'ts': a time cut needs every event's timestamp"};
    if (problem.kind == kBadKindCount) {
      user = user_field.text;
      index = fmrl_item_index(rec, item_field.text.c_str());
      if (!index || item_field.text.find('\0') != std::string::npos) {
        index = 0;
        if (timed && ts.number >= cut.test_from) ++scoring.skipped;
        problem = {kUnknownItem, "unknown item " + item_field.text};
      } else {
        const auto found = user_slot.find(user);
        slot = found == user_slot.end() ? nullptr : &slots[found->second];
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
    const int64_t rank_or_none = static_cast<size_t>(rank) < count ? static_cast<int64_t>(rank) : -1;
    if (timed) {
      scoring.timed_event(ts.number, ts, index, rank_or_none, slot->trained);
      if (ts.number < cut.train_end()) slot->trained = true;
    } else if (cut.kind == "leave-one-out") {  // (simulate also counts under an unknown cut, unreported)
      const auto pop = scoring.popularity_before(index);
      slot->last_pop_hit = static_cast<double>(pop.first), slot->last_pop_ndcg = pop.second;
      scoring.count(index);
    }
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
  std::fclose(in);
  if (out) {
    const bool written = std::fflush(out) == 0 && ::fsync(fileno(out)) == 0;
    if (std::fclose(out) != 0 || !written || std::rename(partial.c_str(), out_name.c_str()) != 0)
      throw Usage(out_name + ": cannot write (" + std::strerror(errno) + ")");
  }

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
  };
  OrderedJson online = {{"HitRate@" + k, events ? double(hits) / events : 0.0},
                        {"NDCG@" + k, events ? ndcg / events : 0.0}};
  OrderedJson last_event = {{"HitRate@" + k, n_users ? last_hit / n_users : 0.0},
                            {"NDCG@" + k, n_users ? last_ndcg / n_users : 0.0}};
  double last_pop_hit = 0.0, last_pop_ndcg = 0.0;  // summed in order of the users' first event, as Python
  for (const Slot& slot : slots) last_pop_hit += slot.last_pop_hit, last_pop_ndcg += slot.last_pop_ndcg;
  scoring.report(report, online, last_event, static_cast<long long>(slots.size()), last_pop_hit, last_pop_ndcg);
  report["online"] = online;
  report["online_last_event"] = last_event;
  report["users"] = slots.size();
  report["state_bytes_per_user"] = fmrl_state_bytes(rec);
  report["peak_rss_bytes"] = static_cast<long long>(usage.ru_maxrss) * 1024;
  report["seconds"] = seconds;
  // a sample may quote bytes that are not UTF-8: written as U+FFFD
  write_atomic(opt.report, report.dump(2, ' ', false, OrderedJson::error_handler_t::replace) + "\n");
  if (!opt.quiet)
    std::printf("%lld events (%lld lines, %zu users), online HitRate@%d %.4f NDCG@%d %.4f, p50 %.1f us -> %s\n",
                events, lines, slots.size(), opt.k, events ? double(hits) / events : 0.0, opt.k,
                events ? ndcg / events : 0.0, percentile(sorted, 50), opt.report.c_str());
  for (Slot& slot : slots) fmrl_session_free(slot.session);
  fmrl_close(rec);
  if (out_lock >= 0) unlock_beside(out_name, out_lock);
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
