// Reading and verifying a bundle (a directory, or a one-file .fmrlb by path, fd or buffer):
// fmrl_sdk/runtime/bundle.py, check for check, message for message.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <map>
#include <regex>
#include <tuple>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>

#include "ids.hpp"
#include "internal.hpp"
#include "picosha2/picosha2.h"

namespace fmrl {
namespace {

constexpr int kSupportedFormatVersion = 3;
const char* const kRequiredFiles[] = {"model.pte", "items.json", "cold_start.json"};
const char* const kManifest = "manifest.json";
// the fingerprint: sha256(kFingerprintPrefix + manifest.json's bytes as stored)[:16], as bundle.py
const char kFingerprintPrefix[] = "fmrl-bundle-v3";  // followed by its NUL

// ---- Limits: the one place in this runtime. The Python runtime has the same values, and the same messages,
// in fmrl_sdk/runtime/bundle.py (MAX_GRANULARITY...); tests/test_bundle_format.py checks that both accept and
// refuse tests/golden/edge_manifests.json identically. The session header (runtime.cpp) stores rows
// (2 * num_blocks), granularity and k_max as uint16 and item indices as int32.
namespace limits {
constexpr long long kMaxGranularity = 65535;
constexpr long long kMaxKMax = 65535;
constexpr long long kMaxBlocks = 1024;  // 2 * kMaxBlocks <= 65535 state rows
constexpr long long kMaxNumItems = (1LL << 31) - 1;
}  // namespace limits

// ---- One-file bundle (.fmrlb), container version 1 (bundle.py FILE_*): magic, u32 LE version, u32 LE entry
// count, count entries of 64 bytes (u64 LE offset, u64 LE size, 48-byte NUL-padded UTF-8 name), then the
// parts, each at a multiple of 64 bytes.
constexpr char kFileMagic[8] = {'F', 'M', 'R', 'L', 'B', 'N', 'D', 'L'};
constexpr uint32_t kFileVersion = 1, kFileMaxEntries = 64;
constexpr uint64_t kFileAlign = 64, kFileHead = 16, kFileEntry = 64, kFileNameBytes = 48;

[[noreturn]] void refuse(const std::string& what) { throw Error(FMRL_ERR_BUNDLE, what); }

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
bool is_symlink(const std::string& p) {
  struct stat st;
  return ::lstat(p.c_str(), &st) == 0 && S_ISLNK(st.st_mode);
}
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

bool is_int(const Json& v) { return v.is_number_integer() || v.is_number_unsigned(); }  // never a bool

// Python's text[:n] for the ASCII names and digests this is used on.
std::string head(const std::string& text, size_t n) { return text.substr(0, n); }

// fileio.contained_path: root/name for a manifest's file name, refusing anything but a plain relative
// path made of no symbolic links.
std::string contained_path(const std::string& root, const Json& name_value, const std::string& where) {
  if (!name_value.is_string() || name_value.get_ref<const std::string&>().empty() ||
      name_value.get_ref<const std::string&>().find_first_of(std::string("\0\\", 2)) != std::string::npos)
    refuse(where + ": file name " + py_repr_str(head(py_str(name_value), 80)) + " is not a plain relative path");
  const std::string& name = name_value.get_ref<const std::string&>();
  std::vector<std::string> parts;
  for (size_t start = 0; start <= name.size();) {
    size_t slash = name.find('/', start);
    if (slash == std::string::npos) slash = name.size();
    const std::string part = name.substr(start, slash - start);
    if (!part.empty() && part != ".") parts.push_back(part);
    start = slash + 1;
  }
  bool outside = name[0] == '/';
  for (const auto& part : parts) outside |= part == "..";
  if (outside) refuse(where + ": file name " + py_repr_str(head(name, 80)) + " points outside " + root);
  std::string current = root;
  for (const auto& part : parts) {
    current = path_join(current, part);
    if (is_symlink(current))
      refuse(current + ": is a symbolic link; refusing to follow it (files must lie inside " + root + ")");
  }
  return current;
}

// The whole file, opened without following a link (a link swapped in after the checks is refused).
std::shared_ptr<Blob> read_contained(const std::string& root, const Json& name, const std::string& where) {
  const std::string file_path = contained_path(root, name, where);
  if (!is_file(file_path))
    refuse(root + ": " + name.get<std::string>() + " is listed in the manifest but missing (partial bundle?)");
  const int fd = ::open(file_path.c_str(), O_RDONLY | O_NOFOLLOW);
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    refuse(file_path + ": cannot read (" + std::strerror(err) + ")");
  }
  auto blob = std::make_shared<Blob>(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < blob->size()) {
    const ssize_t got = ::read(fd, blob->data() + done, blob->size() - done);
    if (got <= 0) {
      const int err = got < 0 ? errno : EIO;
      ::close(fd);
      refuse(file_path + ": cannot read (" + std::strerror(err) + ")");
    }
    done += static_cast<size_t>(got);
  }
  ::close(fd);
  return blob;
}

// bundle.read_json_bytes: UTF-8 (a BOM allowed), any failure an error naming the file.
Json read_json_bytes(const Blob& blob, const std::string& where, const std::string& what) {
  const char* begin = reinterpret_cast<const char*>(blob.data());
  const char* end = begin + blob.size();
  if (blob.size() >= 3 && std::memcmp(begin, "\xEF\xBB\xBF", 3) == 0) begin += 3;
  try {
    (void)Json(std::string(begin, end)).dump();  // throws on invalid UTF-8, as bytes.decode("utf-8")
  } catch (const Json::type_error&) {
    refuse(where + ": " + what + " is not UTF-8");
  }
  // A key twice in one object is refused (jsonio.object_without_duplicates): like Python, report the first
  // repeated key of the first object to close with one (inner objects close before outer ones).
  std::vector<std::pair<std::set<std::string>, std::string>> open_objects;  // keys seen, first repeat
  std::string duplicate;
  bool found = false;
  const Json::parser_callback_t track = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      open_objects.emplace_back();
    } else if (event == Json::parse_event_t::key && !open_objects.empty()) {
      auto& [keys, repeat] = open_objects.back();
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys.insert(key).second && repeat.empty()) repeat = key.empty() ? std::string(1, '\0') : key;
    } else if (event == Json::parse_event_t::object_end && !open_objects.empty()) {
      if (!found && !open_objects.back().second.empty()) {
        found = true;
        duplicate = open_objects.back().second;
        if (duplicate == std::string(1, '\0')) duplicate.clear();
      }
      open_objects.pop_back();
    }
    return true;
  };
  try {
    Json parsed = Json::parse(begin, end, track);
    if (found) refuse(where + ": invalid JSON in " + what + " (duplicate key " + py_repr_str(head(duplicate, 80)) + ")");
    return parsed;
  } catch (const Json::parse_error& e) {
    size_t line = 1;
    for (const char* c = begin; c < end && c < begin + e.byte; ++c) line += *c == '\n';
    std::string msg = e.what();
    const size_t cut = msg.find("] ");
    if (cut != std::string::npos) msg = msg.substr(cut + 2);
    refuse(where + ":" + std::to_string(line) + ": invalid JSON in " + what + " (" + msg + ")");
  } catch (const Json::out_of_range&) {  // a number beyond a double (1e400; Python's json reads it)
    refuse(where + ": invalid JSON in " + what + " (a number beyond the range of a double)");
  }
}

// The texts of the entries of `text`, a JSON array that parsed, blanks around them left out: at(k) is entry k
// (from 0; k never decreases between calls, which together make one pass over the text).
class ArrayEntries {
 public:
  explicit ArrayEntries(std::string_view text) : text_(text) {}
  std::string_view at(size_t k) {
    for (; i_ < text_.size(); ++i_) {
      const char c = text_[i_];
      if (c == '"') {
        while (text_[++i_] != '"') i_ += text_[i_] == '\\';  // past the string, escapes included
      } else if (c == '[' || c == '{') {
        if (++depth_ == 1) start_ = i_ + 1;
      } else if ((c == ',' && depth_ == 1) || ((c == ']' || c == '}') && depth_-- == 1)) {
        const std::string_view found = text_.substr(start_, i_ - start_);
        start_ = i_ + 1;
        if (entry_++ == k) {
          ++i_;  // the next call goes on after this delimiter
          const size_t first = found.find_first_not_of(" \t\n\r"), last = found.find_last_not_of(" \t\n\r");
          return first == std::string_view::npos ? std::string_view() : found.substr(first, last - first + 1);
        }
      }
    }
    return {};
  }

 private:
  std::string_view text_;
  size_t i_ = 0, depth_ = 0, entry_ = 0, start_ = 0;
};

// bundle.check_item_ids: items.json's entries are ids under ids.hpp's rule (fmrl_sdk/ids.py), distinct, kept as
// the strings they are keyed by (an integer as its digits); the first entry breaking the rule is named ("item K":
// the K-th entry). nlohmann holds an integer beyond 64 bits as a float: its text in `blob` says it was one.
std::vector<std::string> check_item_ids(const Json& values, const Blob& blob, const std::string& where) {
  if (!values.is_array() || values.empty()) refuse(where + ": expected a non-empty JSON list of item ids");
  static const std::map<Json::value_t, const char*> python_type = {
      {Json::value_t::null, "NoneType"}, {Json::value_t::boolean, "bool"}, {Json::value_t::number_float, "float"},
      {Json::value_t::array, "list"}, {Json::value_t::object, "dict"}};
  ArrayEntries texts(std::string_view(reinterpret_cast<const char*>(blob.data()), blob.size()));
  std::vector<std::string> ids;
  ids.reserve(values.size());  // never moves: `first` keeps views of its strings
  std::unordered_map<std::string_view, size_t> first;
  for (size_t k = 1; k <= values.size(); ++k) {
    const Json& value = values[k - 1];
    const std::string_view digits = value.is_number_float() ? texts.at(k - 1) : std::string_view();
    std::string problem;
    if (value.is_string() || is_int(value)) ids.push_back(py_str(value));
    else if (!digits.empty() && digits.find_first_of(".eE") == std::string_view::npos) ids.emplace_back(digits);
    else problem = std::string("must be a string or an integer, got ") + python_type.at(value.type());
    if (problem.empty()) problem = id_problem(ids.back());
    if (!problem.empty()) refuse(where + ": item " + std::to_string(k) + ": id " + problem);
    const auto [at, added] = first.emplace(ids.back(), k);
    if (!added)
      refuse(where + ": item " + std::to_string(k) + ": duplicate id (item " + std::to_string(at->second) +
             " has it too)");
  }
  return ids;
}

long long check_int(const Json& manifest, const char* key, long long low, long long high, const std::string& where) {
  const Json& v = manifest[key];
  const bool in_range = is_int(v) && (v.is_number_unsigned()  // nlohmann: non-negative integers are unsigned
                                          ? v.get<unsigned long long>() >= static_cast<unsigned long long>(low) &&
                                                v.get<unsigned long long>() <= static_cast<unsigned long long>(high)
                                          : v.get<long long>() >= low && v.get<long long>() <= high);
  if (!in_range)
    refuse(where + ": " + key + " must be an integer in [" + std::to_string(low) + ", " + std::to_string(high) +
           "], got " + py_repr(v));
  return v.get<long long>();
}

// bundle._version_tuple: "1.5.1", "1.5.1rc1", "1.5.1.dev2", "1.5.1+cpu" -> (1, 5, 1); false if not a version.
bool parse_version(const Json& v, std::vector<long long>& out) {
  static const std::regex pattern(R"((\d+(?:\.\d+)*)(?:(?:a|b|rc|\.post|\.dev)\d*)*(?:\+[0-9A-Za-z.]+)?)");
  std::smatch m;
  if (!v.is_string()) return false;
  const std::string& text = v.get_ref<const std::string&>();
  if (!std::regex_match(text, m, pattern)) return false;
  out.clear();
  const std::string release = m[1];
  for (size_t start = 0; start <= release.size();) {
    size_t dot = release.find('.', start);
    if (dot == std::string::npos) dot = release.size();
    out.push_back(std::strtoll(release.substr(start, dot - start).c_str(), nullptr, 10));
    start = dot + 1;
  }
  return true;
}

// bundle.check_manifest.
void check_manifest(const Json& m, const std::string& where) {
  if (!m.is_object()) refuse(where + ": expected a JSON object");
  const Json version = m.value("format_version", Json());
  if (!is_int(version) || version.get<long long>() != kSupportedFormatVersion) {
    if (is_int(version) && version.is_number_unsigned() && version.get<unsigned long long>() >= 1 &&
        version.get<unsigned long long>() < kSupportedFormatVersion)
      refuse(where + ": format_version " + py_repr(version) + ": written by an older fmrl-sdk; re-export the bundle "
             "with fmrl-sdk export (format " + std::to_string(kSupportedFormatVersion) + ")");
    refuse(where + ": unsupported format_version " + py_repr(version) + " (this runtime reads " +
           std::to_string(kSupportedFormatVersion) + "); upgrade fmrl-sdk or re-export the bundle");
  }
  for (const char* key : {"granularity", "num_blocks", "k_max", "state", "files", "item_table"})
    if (!m.contains(key)) refuse(where + ": missing key " + py_repr_str(key));
  const long long granularity = check_int(m, "granularity", 1, limits::kMaxGranularity, where);
  const long long blocks = check_int(m, "num_blocks", 1, limits::kMaxBlocks, where);
  check_int(m, "k_max", 1, limits::kMaxKMax, where);
  if (m.contains("num_items")) {
    check_int(m, "num_items", 1, limits::kMaxNumItems, where);
    if (m["k_max"].get<long long>() > m["num_items"].get<long long>())
      refuse(where + ": k_max " + py_repr(m["k_max"]) + " exceeds num_items " + py_repr(m["num_items"]));
  }
  const Json& state = m["state"];
  const Json shape = state.is_object() ? state.value("shape", Json()) : Json();
  const bool shape_ok = shape.is_array() && shape.size() == 2 && is_int(shape[0]) && is_int(shape[1]) &&
                        shape[0].get<long long>() == 2 * blocks && shape[1].get<long long>() == granularity;
  if (!shape_ok)
    refuse(where + ": state shape " + py_repr(shape) + " does not match [2 * num_blocks, granularity] = [" +
           std::to_string(2 * blocks) + ", " + std::to_string(granularity) + "]");
  if (state.value("dtype", Json("float32")) != "float32")
    refuse(where + ": state dtype " + py_repr(state.value("dtype", Json())) + "; this runtime keeps float32 states");
  const Json method = m.value("method", Json("forward"));
  if (!method.is_string() || method.get_ref<const std::string&>().empty())
    refuse(where + ": method must be a non-empty string, got " + py_repr(method));
  std::vector<long long> parsed;
  if (m.contains("executorch_version") && !parse_version(m["executorch_version"], parsed))
    refuse(where + ": executorch_version " + py_repr(m["executorch_version"]) +
           " is not a version (expected digits and dots, like 1.5.1)");
  const Json& files = m["files"];
  if (!files.is_object()) refuse(where + ": 'files' must map file names to sha256");
  static const std::regex sha256_hex("[0-9a-f]{64}");
  for (const auto& [name, digest] : files.items()) {
    std::string lower = digest.is_string() ? digest.get<std::string>() : "";
    for (auto& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    if (!digest.is_string() || !std::regex_match(lower, sha256_hex))
      refuse(where + ": sha256 of " + py_repr_str(name) + " must be 64 hex digits, got " +
             py_repr_str(head(py_str(digest), 80)));
  }
  std::string missing;
  for (const char* name : kRequiredFiles)
    if (!files.contains(name)) missing += (missing.empty() ? "" : ", ") + std::string(name);
  if (!missing.empty()) refuse(where + ": 'files' does not list " + missing);
}

// bundle._finite_floats: `count` numbers (not bools) that are finite as float32.
std::vector<float> finite_floats(const Json& values, size_t count, const char* what, const std::string& where) {
  if (!values.is_array() || values.size() != count)
    refuse(where + ": " + what + " must be a list of " + std::to_string(count) + " numbers");
  std::vector<float> out;
  out.reserve(count);
  for (const auto& v : values)
    if (!v.is_number()) refuse(where + ": " + what + " must hold numbers only");
  for (const auto& v : values) {
    const double d = v.get<double>();  // integers too, as float64 -> float32 in Python
    out.push_back(static_cast<float>(d));
    if (!std::isfinite(out.back())) refuse(where + ": " + what + " holds NaN, infinity or a value beyond float32");
  }
  return out;
}

// bundle._table_part: `count` values described by {"file", "offset", "dtype"}, checked against the file.
const uint8_t* table_part(const Json& entry, const char* what, size_t count,
                          const std::unordered_map<std::string, std::shared_ptr<Blob>>& contents,
                          const std::string& where, std::shared_ptr<const Blob>& keep) {
  if (!entry.is_object() || !entry.contains("file") || !entry.contains("offset") || !entry.contains("dtype"))
    refuse(where + ": " + what + " must be an object with file, offset and dtype");
  const Json &name = entry["file"], &offset = entry["offset"], &dtype = entry["dtype"];
  if (!name.is_string() || !contents.count(name.get<std::string>()))
    refuse(where + ": " + what + " file " + py_repr(name) + " is not listed under files");
  if (dtype != "float32" && dtype != "int8")
    refuse(where + ": " + what + " dtype " + py_repr(dtype) + " (expected float32 or int8)");
  const auto& blob = contents.at(name.get<std::string>());
  const unsigned long long nbytes = static_cast<unsigned long long>(count) * (dtype == "int8" ? 1 : 4);
  // nlohmann reads a non-negative integer as unsigned, a negative one as signed
  const bool fits = offset.is_number_unsigned() && offset.get<unsigned long long>() <= blob->size() &&
                    nbytes <= blob->size() - offset.get<unsigned long long>();
  if (!fits)
    refuse(where + ": " + what + " at offset " + py_repr(offset) + " + " + std::to_string(nbytes) +
           " bytes does not fit in " + name.get<std::string>() + " (" + std::to_string(blob->size()) + " bytes)");
  keep = blob;
  return blob->data() + offset.get<long long>();
}

// bundle.read_item_table: the item table, viewed in the bundle's bytes.
ItemTable item_table(const Json& entry, const std::unordered_map<std::string, std::shared_ptr<Blob>>& contents,
                     int64_t items, int32_t size, const std::string& where) {
  if (!entry.is_object() || !entry.contains("rows") || !entry.contains("cols") || !entry.contains("scales"))
    refuse(where + ": item_table must be an object with file, offset, dtype, rows, cols, scales");
  const Json &rows = entry["rows"], &cols = entry["cols"];
  if (!is_int(rows) || !is_int(cols) || rows.get<long long>() != items || cols.get<long long>() != size)
    refuse(where + ": item_table is " + py_repr(rows) + " x " + py_repr(cols) + "; the bundle has " +
           std::to_string(items) + " items of granularity " + std::to_string(size));
  ItemTable table;
  table.count = items;
  table.cols = size;
  table.rows = table_part(entry, "item_table", static_cast<size_t>(items) * size, contents, where, table.file);
  if (entry["dtype"] == "float32") {
    if (!entry["scales"].is_null())
      refuse(where + ": a float32 item_table has no scales (got " + py_repr(entry["scales"]) + ")");
    return table;
  }
  table.int8 = true;
  const uint8_t* scales = table_part(entry["scales"], "item_table scales", static_cast<size_t>(items), contents,
                                     where, table.scales_file);
  if (entry["scales"]["dtype"] != "float32") refuse(where + ": item_table scales must be float32");
  for (int64_t i = 0; i < items; ++i) {
    float scale;
    std::memcpy(&scale, scales + 4 * i, 4);
    if (!std::isfinite(scale)) refuse(where + ": item_table scales hold NaN or infinity");
  }
  table.scales = reinterpret_cast<const float*>(scales);
  return table;
}

// bundle.read_container: the parts of a one-file bundle {name: part of `whole`}, after checking the header
// and every index entry. `order` receives the names in index order (manifest.json first).
std::unordered_map<std::string, std::shared_ptr<Blob>> read_container(const std::shared_ptr<const Blob>& whole,
                                                                      const std::string& where) {
  const uint8_t* data = whole->data();
  const uint64_t size = whole->size();
  if (size < kFileHead || std::memcmp(data, kFileMagic, 8) != 0)
    refuse(where + ": not a one-file bundle (bad magic or too short: " + std::to_string(size) + " bytes)");
  uint32_t version, count;
  std::memcpy(&version, data + 8, 4);  // little-endian hosts
  std::memcpy(&count, data + 12, 4);
  if (version != kFileVersion)
    refuse(where + ": bundle file container version " + std::to_string(version) + "; this runtime reads " +
           std::to_string(kFileVersion));
  if (count < 1 || count > kFileMaxEntries)
    refuse(where + ": the bundle file lists " + std::to_string(count) + " entries (expected 1.." +
           std::to_string(kFileMaxEntries) + ")");
  const uint64_t index_end = kFileHead + count * kFileEntry;
  if (index_end > size)
    refuse(where + ": truncated bundle file (" + std::to_string(size) + " bytes; its index needs " +
           std::to_string(index_end) + ")");
  std::unordered_map<std::string, std::shared_ptr<Blob>> parts;
  struct Span {
    uint64_t offset, length;
    std::string name;
  };
  std::vector<Span> spans;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* entry = data + kFileHead + i * kFileEntry;
    uint64_t offset, length;
    std::memcpy(&offset, entry, 8);
    std::memcpy(&length, entry + 8, 8);
    const char* raw = reinterpret_cast<const char*>(entry + 16);
    size_t end = kFileNameBytes;
    while (end > 0 && raw[end - 1] == '\0') --end;  // NUL padding
    const std::string name(raw, end);
    bool utf8 = true;
    try {
      (void)Json(name).dump();  // throws on invalid UTF-8, as bytes.decode("utf-8")
    } catch (const Json::type_error&) {
      utf8 = false;
    }
    if (name.empty() || !utf8 || name.find('\0') != std::string::npos || name.find('/') != std::string::npos ||
        name.find("..") != std::string::npos)
      refuse(where + ": entry " + std::to_string(i) +
             ": bad name (expected non-empty UTF-8 without NUL, '/' or '..')");
    if (parts.count(name)) refuse(where + ": entry " + std::to_string(i) + ": " + name + " appears twice");
    if (offset % kFileAlign || offset < index_end)
      refuse(where + ": entry " + std::to_string(i) + " (" + name + "): offset " + std::to_string(offset) +
             " is not a multiple of " + std::to_string(kFileAlign) + " after the index (" +
             std::to_string(index_end) + " bytes)");
    if (offset > size || length > size - offset)
      refuse(where + ": entry " + std::to_string(i) + " (" + name + "): " + std::to_string(length) +
             " bytes at offset " + std::to_string(offset) + " lie outside the file (" + std::to_string(size) +
             " bytes; truncated?)");
    parts[name] = std::make_shared<Blob>(whole, static_cast<size_t>(offset), static_cast<size_t>(length));
    spans.push_back({offset, length, name});
  }
  if (spans[0].name != kManifest)
    refuse(where + ": the first entry is " + spans[0].name + ", expected " + kManifest);
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return std::tie(a.offset, a.length, a.name) < std::tie(b.offset, b.length, b.name);  // as Python's sort
  });
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i - 1].offset + spans[i - 1].length > spans[i].offset)
      refuse(where + ": parts " + spans[i - 1].name + " and " + spans[i].name + " overlap");
  return parts;
}

std::string sha256_hex(const uint8_t* data, size_t size) {
  std::vector<unsigned char> digest(picosha2::k_digest_size);
  picosha2::hash256(data, data + size, digest.begin(), digest.end());
  return picosha2::bytes_to_hex_string(digest.begin(), digest.end());
}

using ReadFile = std::function<std::shared_ptr<Blob>(const std::string& name)>;

// bundle._verify: the checks every form of bundle gets. `manifest_blob` is manifest.json as stored,
// `read_file(name)` a listed file's bytes; `check_names` (may be empty) runs after check_manifest.
Bundle verify(const std::string& path, const Blob& manifest_blob, const ReadFile& read_file,
              bool check_executorch_version, const std::function<void(const Json&)>& check_names) {
  Bundle b;
  b.path = path;
  const std::string manifest_path = path_join(path, kManifest);
  b.manifest = read_json_bytes(manifest_blob, manifest_path, "the manifest");
  const Json& m = b.manifest;
  check_manifest(m, manifest_path);
  if (check_names) check_names(m);
  std::unordered_map<std::string, std::shared_ptr<Blob>> contents;
  for (const auto& [name, expected] : m["files"].items()) {
    auto blob = read_file(name);
    const std::string actual = sha256_hex(blob->data(), blob->size());
    const std::string& want = expected.get_ref<const std::string&>();
    std::string lower = want;
    for (auto& c : lower) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
    if (actual != lower)
      refuse(path_join(path, path_normalise(name)) + ": sha256 mismatch (manifest " + head(want, 12) + "..., file " +
             head(actual, 12) + "...); the bundle was modified or is incomplete");
    contents[name] = std::move(blob);
  }
  std::vector<long long> exported, installed;
  if (check_executorch_version && m.contains("executorch_version") &&
      parse_version(Json(fmrl_executorch_version()), installed) && parse_version(m["executorch_version"], exported) &&
      exported > installed)
    refuse(manifest_path + ": exported with ExecuTorch " + py_str(m["executorch_version"]) + ", newer than the installed " +
           fmrl_executorch_version() + "; upgrade executorch");
  const std::string items_path = path_join(path, "items.json"), cold_path = path_join(path, "cold_start.json");
  const Blob& items = *contents["items.json"];
  b.item_ids = check_item_ids(read_json_bytes(items, items_path, "items.json"), items, items_path);
  const long long n = static_cast<long long>(b.item_ids.size());
  if (m.contains("num_items") && m["num_items"].get<long long>() != n)
    refuse(manifest_path + ": num_items " + py_repr(m["num_items"]) + " but items.json lists " + std::to_string(n));
  b.k_max = static_cast<int32_t>(m["k_max"].get<long long>());
  if (b.k_max > n) refuse(manifest_path + ": k_max " + std::to_string(b.k_max) + " exceeds the " + std::to_string(n) + " items");
  b.granularity = static_cast<int32_t>(m["granularity"].get<long long>());
  b.num_blocks = static_cast<int32_t>(m["num_blocks"].get<long long>());
  b.rows = 2 * b.num_blocks;
  // bundle.check_cold_start
  const Json cold = read_json_bytes(*contents["cold_start.json"], cold_path, "cold_start.json");
  if (!cold.is_object() || !cold.contains("indices") || !cold.contains("scores") || !cold.contains("hidden"))
    refuse(cold_path + ": expected indices, scores and hidden");
  const Json& indices = cold["indices"];
  if (!indices.is_array() || static_cast<long long>(indices.size()) != b.k_max)
    refuse(cold_path + ": indices must be a list of k_max = " + std::to_string(b.k_max) + " item indices");
  for (const auto& i : indices) {
    if (!is_int(i) || i.get<long long>() < 1 || i.get<long long>() > n)
      refuse(cold_path + ": index " + py_repr(i) + " outside [1, " + std::to_string(n) + "]; the bundle has " +
             std::to_string(n) + " items");
    b.cold_indices.push_back(i.get<long long>());
  }
  if (std::set<int64_t>(b.cold_indices.begin(), b.cold_indices.end()).size() != b.cold_indices.size())
    refuse(cold_path + ": duplicate indices; the bundle has " + std::to_string(n) + " items");
  b.cold_scores = finite_floats(cold["scores"], b.k_max, "scores", cold_path);
  b.cold_hidden = finite_floats(cold["hidden"], b.granularity, "hidden", cold_path);
  b.method = m.value("method", std::string("forward"));
  if (m.contains("profile") && m["profile"].is_string()) b.profile = m["profile"].get<std::string>();
  b.table = item_table(m["item_table"], contents, n, b.granularity, manifest_path);
  b.program = contents["model.pte"];
  std::vector<unsigned char> text(kFingerprintPrefix, kFingerprintPrefix + sizeof kFingerprintPrefix);  // with NUL
  text.insert(text.end(), manifest_blob.data(), manifest_blob.data() + manifest_blob.size());
  std::vector<unsigned char> digest(picosha2::k_digest_size);
  picosha2::hash256(text.begin(), text.end(), digest.begin(), digest.end());
  std::memcpy(b.fingerprint, digest.data(), 16);
  return b;
}

// bundle.load_bundle_bytes on a Blob: the container's parts, then verify().
Bundle load_container(std::shared_ptr<const Blob> whole, const std::string& where, bool check_executorch_version) {
  if (reinterpret_cast<uintptr_t>(whole->data()) % kFileAlign) {
    // parts are 64-byte aligned relative to the container; ExecuTorch wants the program aligned: one copy
    auto copy = std::make_shared<Blob>(whole->size());
    std::memcpy(copy->data(), whole->data(), whole->size());
    whole = std::move(copy);
  }
  auto parts = read_container(whole, where);
  const std::string manifest_where = path_join(where, kManifest);
  auto read_part = [&](const std::string& name) {
    const auto it = parts.find(name);
    if (it == parts.end()) refuse(manifest_where + ": " + name + " is listed in the manifest but not in the bundle file");
    return it->second;
  };
  auto check_names = [&](const Json& m) {
    std::vector<std::string> extra;
    for (const auto& [name, part] : parts)
      if (name != kManifest && !m["files"].contains(name)) extra.push_back(name);
    std::sort(extra.begin(), extra.end());  // Python's sorted(): code point order = UTF-8 byte order
    if (extra.empty()) return;
    std::string list;
    for (const auto& name : extra) list += (list.empty() ? "" : ", ") + name;
    refuse(where + ": the bundle file holds " + list + ", not listed in the manifest");
  };
  return verify(where, *parts.at(kManifest), read_part, check_executorch_version, check_names);
}

}  // namespace

// What the Python runtime's messages are made of: repr() and str().
namespace {
std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return Json(v).dump();  // shortest round-trip digits, like float.__repr__
}
}  // namespace

std::string py_repr_str(std::string_view text) {
  const bool has_single = text.find('\'') != std::string_view::npos;
  const bool has_double = text.find('"') != std::string_view::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : text) {
    if (c == '\\') out += "\\\\";
    else if (c == static_cast<unsigned char>(quote)) { out += '\\'; out += static_cast<char>(c); }
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) { char buf[8]; std::snprintf(buf, sizeof buf, "\\x%02x", c); out += buf; }
    else out += static_cast<char>(c);
  }
  out += quote;
  return out;
}

std::string py_repr(const Json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_number_float()) return float_repr(v.get<double>());
  if (v.is_number()) return v.dump();
  if (v.is_string()) return py_repr_str(v.get_ref<const std::string&>());
  std::string out;
  if (v.is_array()) {
    out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
    return out + "]";
  }
  out = "{";
  bool first = true;
  for (const auto& [key, value] : v.items()) {
    out += (first ? "" : ", ") + py_repr_str(key) + ": " + py_repr(value);
    first = false;
  }
  return out + "}";
}

std::string py_str(const Json& v) { return v.is_string() ? v.get<std::string>() : py_repr(v); }

Blob::Blob(size_t size) : size_(size) {
  const size_t rounded = (size + 63) / 64 * 64;
  owned_ = std::aligned_alloc(64, rounded ? rounded : 64);
  if (!owned_) throw std::bad_alloc();
  data_ = static_cast<uint8_t*>(owned_);
}

Blob::Blob(std::shared_ptr<const Blob> whole, size_t offset, size_t size)
    : data_(const_cast<uint8_t*>(whole->data()) + offset), size_(size), whole_(std::move(whole)) {}

std::shared_ptr<Blob> Blob::borrow(const void* data, size_t size) {
  std::shared_ptr<Blob> blob(new Blob());
  blob->data_ = static_cast<uint8_t*>(const_cast<void*>(data));
  blob->size_ = size;
  return blob;
}

std::shared_ptr<Blob> Blob::map(int fd, uint64_t offset, uint64_t size, const std::string& where) {
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t start = offset - offset % page, span = offset - start + size;
  void* base = ::mmap(nullptr, static_cast<size_t>(span), PROT_READ, MAP_PRIVATE, fd, static_cast<off_t>(start));
  if (base == MAP_FAILED) refuse(where + ": cannot map the file (" + std::strerror(errno) + ")");
  std::shared_ptr<Blob> blob(new Blob());
  blob->mapped_ = base;
  blob->mapped_size_ = static_cast<size_t>(span);
  blob->data_ = static_cast<uint8_t*>(base) + (offset - start);
  blob->size_ = static_cast<size_t>(size);
  return blob;
}

Blob::~Blob() {
  std::free(owned_);
  if (mapped_) ::munmap(mapped_, mapped_size_);
}

void ItemTable::row(int64_t index, float* out) const {
  const size_t offset = static_cast<size_t>(index - 1) * cols;
  if (!int8) {
    std::memcpy(out, rows + offset * 4, static_cast<size_t>(cols) * 4);  // little-endian hosts only
    return;
  }
  float scale;
  std::memcpy(&scale, reinterpret_cast<const uint8_t*>(scales) + static_cast<size_t>(index - 1) * 4, 4);
  const int8_t* q = reinterpret_cast<const int8_t*>(rows) + offset;
  for (int32_t j = 0; j < cols; ++j) out[j] = static_cast<float>(q[j]) * scale;
}

Bundle load_bundle(const std::string& path_arg, bool check_executorch_version) {
  const std::string path = path_normalise(path_arg);
  if (is_file(path)) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW);  // a link swapped in after the check: refused
    struct stat st;
    if (fd < 0 || ::fstat(fd, &st) != 0) {
      const int err = errno;
      if (fd >= 0) ::close(fd);
      refuse(path + ": cannot read (" + std::strerror(err) + ")");
    }
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    std::shared_ptr<Blob> whole;
    try {
      if (size < kFileHead) refuse(path + ": not a one-file bundle (bad magic or too short: " + std::to_string(size) + " bytes)");
      whole = Blob::map(fd, 0, size, path);
    } catch (...) {
      ::close(fd);
      throw;
    }
    ::close(fd);
    return load_container(std::move(whole), path, check_executorch_version);
  }
  if (!is_dir(path)) refuse(path + ": bundle directory not found");
  const std::string manifest_path = path_join(path, kManifest);
  if (!exists(manifest_path) && !is_symlink(manifest_path))
    refuse(path + ": not a bundle (no manifest.json); the export may be partial");
  const auto manifest = read_contained(path, Json(kManifest), manifest_path);
  return verify(path, *manifest, [&](const std::string& name) { return read_contained(path, Json(name), manifest_path); },
                check_executorch_version, nullptr);
}

Bundle load_bundle_fd(int fd, uint64_t offset, uint64_t length, bool check_executorch_version) {
  struct stat st;
  if (fd < 0 || ::fstat(fd, &st) != 0) refuse("fd " + std::to_string(fd) + ": not an open file descriptor");
  const std::string where = "fd " + std::to_string(fd) + " [" + std::to_string(offset) + ", +" + std::to_string(length) + "]";
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset > size || length > size - offset)
    refuse(where + ": offset " + std::to_string(offset) + " + length " + std::to_string(length) +
           " lies outside the file (" + std::to_string(size) + " bytes)");
  if (length < kFileHead)
    refuse(where + ": not a one-file bundle (bad magic or too short: " + std::to_string(length) + " bytes)");
  return load_container(Blob::map(fd, offset, length, where), where, check_executorch_version);
}

Bundle load_bundle_buffer(const void* data, size_t size, bool check_executorch_version) {
  static const char empty = 0;
  return load_container(Blob::borrow(data ? data : &empty, data ? size : 0), "<buffer>", check_executorch_version);
}

}  // namespace fmrl
