// fmrl_stream: run a bundle's model.pte over a list of internal item indices with the ExecuTorch C++
// Module API and print the top-k after the last one (the same as the Python runtime's
// session.recommend(k) after observing those items).
//
//   fmrl_stream BUNDLE_DIR K INDEX [INDEX ...]
//
// Output: one line per recommended item, "item_id<TAB>score<TAB>internal_index", best first; the median
// step time goes to stderr. The state [2 * blocks, s] is owned here: zeros at the start, and each step's
// new_state is copied back in (the .pte keeps no state of its own; see docs/bundle-format.md).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;
using executorch::runtime::EValue;

namespace {

int fail(const std::string& what) {
  std::fprintf(stderr, "error: %s\n", what.c_str());
  return 1;
}

// items.json is a JSON array of strings; external ids are plain ASCII strings, escapes are kept verbatim
// except \" and \\ (enough for item ids, no JSON library needed).
bool read_item_ids(const std::string& path, std::vector<std::string>& ids) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();
  bool in_string = false;
  std::string current;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (!in_string) {
      if (c == '"') { in_string = true; current.clear(); }
    } else if (c == '\\' && i + 1 < text.size()) {
      current.push_back(text[++i]);
    } else if (c == '"') {
      in_string = false;
      ids.push_back(current);
    } else {
      current.push_back(c);
    }
  }
  return !ids.empty();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BUNDLE_DIR K INDEX [INDEX ...]\n", argv[0]);
    return 2;
  }
  const std::string bundle = argv[1];
  const long k = std::strtol(argv[2], nullptr, 10);
  std::vector<int64_t> items;
  for (int i = 3; i < argc; ++i) items.push_back(std::strtoll(argv[i], nullptr, 10));

  std::vector<std::string> ids;
  if (!read_item_ids(bundle + "/items.json", ids)) return fail("cannot read " + bundle + "/items.json");

  Module module(bundle + "/model.pte", Module::LoadMode::Mmap);
  if (module.load_method("forward") != Error::Ok) return fail("cannot load method forward of model.pte");
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return fail("no method metadata");
  auto state_meta = meta->input_tensor_meta(1);
  if (!state_meta.ok() || state_meta->sizes().size() != 2) return fail("unexpected state input");
  const int32_t rows = state_meta->sizes()[0], size = state_meta->sizes()[1];

  std::vector<float> state(static_cast<size_t>(rows) * size, 0.0f);
  std::vector<float> scores;
  std::vector<int64_t> indices;
  std::vector<double> micros;
  int64_t item = 0;
  for (int64_t index : items) {
    if (index < 1 || index > static_cast<int64_t>(ids.size())) return fail("item index out of range");
    item = index;
    auto item_tensor = from_blob(&item, {1}, ScalarType::Long);
    auto state_tensor = from_blob(state.data(), {rows, size}, ScalarType::Float);
    auto started = std::chrono::steady_clock::now();
    auto result = module.forward({EValue(item_tensor), EValue(state_tensor)});
    auto finished = std::chrono::steady_clock::now();
    if (!result.ok()) return fail("forward failed");
    micros.push_back(std::chrono::duration<double, std::micro>(finished - started).count());
    const auto& outputs = *result;
    const auto out_scores = outputs[0].toTensor();
    const auto out_indices = outputs[1].toTensor();
    const auto new_state = outputs[2].toTensor();
    // copy everything out before the next call reuses the method's buffers
    scores.assign(out_scores.const_data_ptr<float>(), out_scores.const_data_ptr<float>() + out_scores.numel());
    if (out_indices.scalar_type() == ScalarType::Long) {
      indices.assign(out_indices.const_data_ptr<int64_t>(),
                     out_indices.const_data_ptr<int64_t>() + out_indices.numel());
    } else if (out_indices.scalar_type() == ScalarType::Float) {  // some int8 exports return float indices
      const float* p = out_indices.const_data_ptr<float>();
      indices.assign(p, p + out_indices.numel());
    } else {
      return fail("unexpected dtype of the indices output");
    }
    std::copy(new_state.const_data_ptr<float>(), new_state.const_data_ptr<float>() + new_state.numel(),
              state.begin());
  }
  const long n = std::min<long>(k, static_cast<long>(scores.size()));
  for (long r = 0; r < n; ++r) {
    const int64_t index = indices[r];
    std::printf("%s\t%.7g\t%lld\n", ids[index - 1].c_str(), scores[r], static_cast<long long>(index));
  }
  std::sort(micros.begin(), micros.end());
  std::fprintf(stderr, "steps %zu, median step %.1f us (%d x %d state)\n", micros.size(),
               micros[micros.size() / 2], rows, size);
  return 0;
}
