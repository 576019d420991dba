// Path spelling shared by the library and its tools (no other dependency, so a tool can compile it in).
#include "paths.hpp"

namespace fmrl {

std::string path_normalise(const std::string& path) {
  const bool absolute = !path.empty() && path[0] == '/';
  std::string out = absolute ? "/" : "";
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    const std::string part = path.substr(start, slash - start);
    if (!part.empty() && part != ".") {
      if (!out.empty() && out.back() != '/') out += '/';
      out += part;
    }
    start = slash + 1;
  }
  return out.empty() ? "." : out;
}

std::string path_join(const std::string& a, const std::string& b) {
  if (a == ".") return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

}  // namespace fmrl
