// Path spelling as Python's pathlib prints it; used in messages and reports by the library and fmrl_replay.
#pragma once

#include <string>

namespace fmrl {

std::string path_normalise(const std::string& path);               // what str(pathlib.Path(path)) prints
std::string path_join(const std::string& a, const std::string& b);  // str(Path(a) / b) for normalised a

}  // namespace fmrl
