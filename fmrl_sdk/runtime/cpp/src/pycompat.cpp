// What the Python runtime's messages and hashes are made of: repr(), str(), json.dumps(sort_keys=True),
// pathlib's rendering of a path, zlib.crc32.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "internal.hpp"

namespace fmrl {
namespace {

std::string float_repr(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return Json(v).dump();  // shortest round-trip digits, like float.__repr__
}

void append_u16(std::string& out, unsigned value) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "\\u%04x", value);
  out += buf;
}

// json.dumps string with ensure_ascii=True.
void dump_ascii_string(std::string& out, const std::string& s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp = c;
    size_t len = 1;
    if (c >= 0xF0 && i + 3 < s.size() + 0) {
      cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
      len = 4;
    } else if (c >= 0xE0 && i + 2 < s.size()) {
      cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
      len = 3;
    } else if (c >= 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      len = 2;
    }
    i += len;
    switch (cp) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    if (cp >= 0x20 && cp < 0x7F) {
      out += static_cast<char>(cp);
    } else if (cp > 0xFFFF) {
      cp -= 0x10000;
      append_u16(out, 0xD800 | (cp >> 10));
      append_u16(out, 0xDC00 | (cp & 0x3FF));
    } else {
      append_u16(out, cp);
    }
  }
  out += '"';
}

void dump_sorted(std::string& out, const Json& v) {
  if (v.is_object()) {
    std::vector<std::pair<std::string, const Json*>> items;
    for (const auto& [key, value] : v.items()) items.emplace_back(key, &value);
    std::sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    out += '{';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += ',';
      dump_ascii_string(out, items[i].first);
      out += ':';
      dump_sorted(out, *items[i].second);
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out += ',';
      dump_sorted(out, v[i]);
    }
    out += ']';
  } else if (v.is_string()) {
    dump_ascii_string(out, v.get_ref<const std::string&>());
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d);
  } else {
    out += v.dump();  // null, true, false, integers
  }
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

std::string json_dumps_sorted(const Json& object) {
  std::string out;
  dump_sorted(out, object);
  return out;
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
