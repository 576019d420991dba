// fmrl_step_bench: what the C runtime adds per event over the bare ExecuTorch call.
//
//   fmrl_step_bench --bundle B --stream S.jsonl [--events 20000] [--repeats 3] [--threads 1] [--json OUT.json]
//
// Over the stream's first --events valid item ids (in stream order, one state carried through all of them),
// alternating --repeats times:
//   bare     the program's method called directly: set_input(x), set_input(state), execute(), new_state
//            copied back (x = the item's vector, looked up beforehand) - the floor any runtime pays
//   runtime  fmrl_recommend(k=10) + fmrl_observe_index on one session: what fmrl_replay times per event
// Prints a table of medians (p50, mean, per repeat) and writes them as JSON.
//
//   fmrl_step_bench --compare PREFIX --size S --rows R --items N [--k 100] [--events 2000] [--repeats 3] [--json OUT]
//
// Issue 28 part 4, the top-k inside the program or in the runtime: PREFIX-topk.pte (a step returning the top-k,
// ExecuTorch's top-k in the program), PREFIX-scores.pte (the format-3 step returning all N scores, then the
// runtime's select_topk) and PREFIX-floor.pte (the scoring product alone, hidden [1, S] -> [1, N]), fed the
// float32 vectors of PREFIX-x.f32 (events x S), state carried; alternating --repeats times; written by
// benchmarks/step_latency.py --compare-topk.
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/platform/runtime.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/internal.hpp"
#include "fmrl_runtime.h"
#include "nlohmann_json/json.hpp"

#include "../src/executorch_threadpool.hpp"  // the hand-declared pool, as engine.cpp uses it

namespace et = executorch::runtime;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using Clock = std::chrono::steady_clock;

namespace {

struct Stats {
  double p50, mean;
};

Stats stats(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double u : us) sum += u;
  const size_t n = us.size();
  const double p50 = n % 2 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
  return {p50, sum / n};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

long rss_bytes() {  // resident set size now (Linux), -1 elsewhere
  std::ifstream status("/proc/self/status");
  std::string key;
  long kb;
  while (status >> key)
    if (key == "VmRSS:" && status >> kb) return kb * 1024;
  return -1;
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read " + path);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// One method of a .pte file, loaded as fmrl_runtime loads it (planned buffers of our own).
struct LoadedMethod {
  std::vector<uint8_t> bytes;
  std::unique_ptr<executorch::extension::BufferDataLoader> loader;
  std::unique_ptr<et::Program> program;
  std::vector<std::vector<uint8_t>> planned;
  std::vector<et::Span<uint8_t>> spans;
  std::unique_ptr<et::HierarchicalAllocator> planned_allocator;
  executorch::extension::MallocMemoryAllocator method_allocator, temp_allocator;
  std::unique_ptr<et::MemoryManager> memory;
  std::unique_ptr<et::Method> method;

  explicit LoadedMethod(const std::string& path) : bytes(read_file(path)) {
    loader = std::make_unique<executorch::extension::BufferDataLoader>(bytes.data(), bytes.size());
    auto loaded = et::Program::load(loader.get());
    if (!loaded.ok()) fail("cannot load " + path);
    program = std::make_unique<et::Program>(std::move(*loaded));
    auto meta = program->method_meta("forward");
    if (!meta.ok()) fail(path + ": no method forward");
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i)
      planned.emplace_back(static_cast<size_t>(*meta->memory_planned_buffer_size(i)));
    for (auto& buffer : planned) spans.emplace_back(buffer.data(), buffer.size());
    planned_allocator =
        std::make_unique<et::HierarchicalAllocator>(et::Span<et::Span<uint8_t>>(spans.data(), spans.size()));
    memory = std::make_unique<et::MemoryManager>(&method_allocator, planned_allocator.get(), &temp_allocator);
    auto m = program->load_method("forward", memory.get());
    if (!m.ok()) fail(path + ": cannot load the method");
    method = std::make_unique<et::Method>(std::move(*m));
  }
};

// --compare: see the header comment. Returns the process exit code.
int compare(const std::string& prefix, int32_t s, int32_t rows, int64_t n, int32_t k, size_t events, int repeats,
            const std::string& json_out) {
  et::runtime_init();
  LoadedMethod topk(prefix + "-topk.pte"), scores_only(prefix + "-scores.pte"), floor(prefix + "-floor.pte");
  const std::vector<uint8_t> raw = read_file(prefix + "-x.f32");
  const size_t available = raw.size() / (4 * static_cast<size_t>(s));
  if (!available) fail(prefix + "-x.f32: no vectors");
  std::vector<float> vectors(available * s);
  std::memcpy(vectors.data(), raw.data(), vectors.size() * 4);
  std::vector<float> x(s), state(static_cast<size_t>(rows) * s), top_scores(k);
  std::vector<int32_t> top_indices(k);
  fmrl::TopkScratch heap;
  TensorImpl::SizesType x_sizes[2] = {1, s}, state_sizes[2] = {rows, s};
  TensorImpl::DimOrderType dim_order[2] = {0, 1};
  TensorImpl::StridesType x_strides[2] = {s, 1}, state_strides[2] = {s, 1};
  TensorImpl x_impl(ScalarType::Float, 2, x_sizes, x.data(), dim_order, x_strides);
  TensorImpl state_impl(ScalarType::Float, 2, state_sizes, state.data(), dim_order, state_strides);
  // variant 0: in-program top-k (state is output 2); 1: all scores + select_topk (state output 2); 2: floor;
  // 3: the scores program alone (no top-k)
  auto run = [&](int variant) {
    std::vector<double> us;
    us.reserve(events);
    std::fill(state.begin(), state.end(), 0.0f);
    et::Method& method = *(variant == 0 ? topk : variant == 2 ? floor : scores_only).method;
    for (size_t e = 0; e < events; ++e) {
      const auto t0 = Clock::now();
      std::memcpy(x.data(), &vectors[(e % available) * s], s * sizeof(float));
      if (method.set_input(et::EValue(Tensor(&x_impl)), 0) != et::Error::Ok ||
          (variant != 2 && method.set_input(et::EValue(Tensor(&state_impl)), 1) != et::Error::Ok) ||
          method.execute() != et::Error::Ok)
        fail("call failed");
      if (variant == 0) {
        std::memcpy(top_scores.data(), method.get_output(0).toTensor().const_data_ptr<float>(), k * sizeof(float));
      } else if (variant == 1) {
        const Tensor all = method.get_output(0).toTensor();
        if (all.numel() != n) fail("the scores program returns " + std::to_string(all.numel()) + " scores");
        fmrl::select_topk(all.const_data_ptr<float>(), n, k, heap, top_scores.data(), top_indices.data());
      }
      if (variant != 2) {
        const Tensor new_state = method.get_output(2).toTensor();
        std::memcpy(state.data(), new_state.const_data_ptr<float>(), state.size() * sizeof(float));
      }
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return stats(us);
  };
  std::vector<double> p50[4], mean[4];
  for (int r = 0; r < repeats; ++r)
    for (int variant = 0; variant < 4; ++variant) {
      const Stats st = run(variant);
      p50[variant].push_back(st.p50), mean[variant].push_back(st.mean);
    }
  const double floor_p50 = median(p50[2]);
  // select_topk alone, over the scores of the last call of the scores program
  std::vector<float> last(static_cast<size_t>(n));
  std::memcpy(last.data(), scores_only.method->get_output(0).toTensor().const_data_ptr<float>(), last.size() * 4);
  std::vector<double> select_us;
  for (size_t e = 0; e < events; ++e) {
    const auto t0 = Clock::now();
    fmrl::select_topk(last.data(), n, k, heap, top_scores.data(), top_indices.data());
    select_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
  const nlohmann::ordered_json result = {
      {"prefix", prefix}, {"granularity", s}, {"num_items", n}, {"k", k}, {"events", events}, {"repeats", repeats},
      {"in_program_topk_p50_us", median(p50[0])}, {"runtime_topk_p50_us", median(p50[1])},
      {"floor_p50_us", floor_p50}, {"scores_program_p50_us", median(p50[3])},
      {"select_topk_p50_us", stats(select_us).p50}, {"select_topk_candidates", heap.candidates.size()},
      {"in_program_topk_mean_us", median(mean[0])},
      {"runtime_topk_mean_us", median(mean[1])}, {"floor_mean_us", median(mean[2])},
      {"in_program_topk_over_floor", median(p50[0]) / floor_p50},
      {"runtime_topk_over_floor", median(p50[1]) / floor_p50},
      {"per_repeat_p50_us", {{"in_program_topk", p50[0]}, {"runtime_topk", p50[1]}, {"floor", p50[2]},
                              {"scores_program", p50[3]}}}};
  std::printf("%s\n", result.dump().c_str());
  if (!json_out.empty()) std::ofstream(json_out) << result.dump(2) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  std::string bundle, stream, json_out, compare_prefix;
  size_t max_events = 20000;
  int repeats = 3, threads = 1;
  int32_t size = 0, state_rows = 2, k = 100;
  int64_t num_items = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--bundle") bundle = v;
    else if (a == "--stream") stream = v;
    else if (a == "--events") max_events = std::stoul(v);
    else if (a == "--repeats") repeats = std::stoi(v);
    else if (a == "--threads") threads = std::stoi(v);
    else if (a == "--json") json_out = v;
    else if (a == "--compare") compare_prefix = v;
    else if (a == "--size") size = std::stoi(v);
    else if (a == "--rows") state_rows = std::stoi(v);
    else if (a == "--items") num_items = std::stoll(v);
    else if (a == "--k") k = std::stoi(v);
    else fail("unknown option " + a);
  }
  if (!compare_prefix.empty()) {
    if (size < 1 || num_items < 1) fail("--compare needs --size and --items");
    et::runtime_init();
    // no recommender is opened here: resize ExecuTorch's pool as fmrl_open does (engine.cpp PoolShare)
    if (!executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
      fail("cannot resize ExecuTorch's thread pool");
    return compare(compare_prefix, size, state_rows, num_items, k, max_events, repeats, json_out);
  }
  if (bundle.empty() || stream.empty()) fail("usage: fmrl_step_bench --bundle B --stream S.jsonl [--json OUT]");
  fmrl_open_options options;
  fmrl_open_options_init(&options);
  options.threads = threads;
  fmrl_recommender* rec = nullptr;
  const long rss_before_open = rss_bytes();
  if (fmrl_open(bundle.c_str(), &options, &rec) != FMRL_OK) fail(fmrl_last_error());
  const long rss_after_open = rss_bytes();
  // heap bytes per live session: 10,000 sessions, allocator statistics before and after
  const size_t sessions = 10000;
  std::vector<fmrl_session*> live(sessions);
  const size_t heap_before = mallinfo2().uordblks;
  for (auto& session : live)
    if (fmrl_session_new(rec, &session) != FMRL_OK) fail(fmrl_last_error());
  const double heap_per_session = double(mallinfo2().uordblks - heap_before) / sessions;
  for (auto* session : live) fmrl_session_free(session);
  const int32_t s = fmrl_granularity(rec), k_max = fmrl_k_max(rec);
  const nlohmann::json manifest = nlohmann::json::parse(std::ifstream(bundle + "/manifest.json"));
  const int32_t rows = manifest["state"]["shape"][0].get<int32_t>();

  // the stream's item ids -> internal indices and vectors
  std::vector<int64_t> items;
  std::vector<float> vectors;
  std::ifstream in(stream);
  std::string line;
  while (items.size() < max_events && std::getline(in, line)) {
    const auto obj = nlohmann::json::parse(line, nullptr, false);
    if (!obj.is_object() || !obj.contains("item")) continue;
    const std::string id = obj["item"].is_string() ? obj["item"].get<std::string>() : obj["item"].dump();
    const int64_t index = fmrl_item_index(rec, id.c_str());
    if (!index) continue;
    items.push_back(index);
    vectors.resize(vectors.size() + s);
    if (fmrl_item_vector(rec, id.c_str(), &vectors[vectors.size() - s], s) != FMRL_OK) fail(fmrl_last_error());
  }
  if (items.empty()) fail(stream + ": no known items");

  // the bare method, loaded on its own from the same program bytes
  std::ifstream pte(bundle + "/model.pte", std::ios::binary);
  std::vector<uint8_t> program_bytes((std::istreambuf_iterator<char>(pte)), std::istreambuf_iterator<char>());
  executorch::extension::BufferDataLoader loader(program_bytes.data(), program_bytes.size());
  auto program = et::Program::load(&loader);
  if (!program.ok()) fail("cannot load model.pte");
  const std::string method_name = manifest.value("method", std::string("forward"));
  auto meta = program->method_meta(method_name.c_str());
  std::vector<std::vector<uint8_t>> planned;
  std::vector<et::Span<uint8_t>> spans;
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    planned.emplace_back(static_cast<size_t>(*meta->memory_planned_buffer_size(i)));
    spans.emplace_back(planned.back().data(), planned.back().size());
  }
  et::HierarchicalAllocator planned_allocator({spans.data(), spans.size()});
  executorch::extension::MallocMemoryAllocator method_allocator, temp_allocator;
  et::MemoryManager memory(&method_allocator, &planned_allocator, &temp_allocator);
  auto method = program->load_method(method_name.c_str(), &memory);
  if (!method.ok()) fail("cannot load the method");
  std::vector<float> x(s), state(static_cast<size_t>(rows) * s);
  TensorImpl::SizesType x_sizes[2] = {1, s}, state_sizes[2] = {rows, s};
  TensorImpl::DimOrderType dim_order[2] = {0, 1};
  TensorImpl::StridesType x_strides[2] = {s, 1}, state_strides[2] = {s, 1};
  TensorImpl x_impl(ScalarType::Float, 2, x_sizes, x.data(), dim_order, x_strides);
  TensorImpl state_impl(ScalarType::Float, 2, state_sizes, state.data(), dim_order, state_strides);

  auto bare = [&] {
    std::vector<double> us;
    us.reserve(items.size());
    std::fill(state.begin(), state.end(), 0.0f);
    for (size_t e = 0; e < items.size(); ++e) {
      const auto t0 = Clock::now();
      std::memcpy(x.data(), &vectors[e * s], s * sizeof(float));
      if (method->set_input(et::EValue(Tensor(&x_impl)), 0) != et::Error::Ok ||
          method->set_input(et::EValue(Tensor(&state_impl)), 1) != et::Error::Ok || method->execute() != et::Error::Ok)
        fail("bare call failed");
      const Tensor new_state = method->get_output(2).toTensor();
      std::memcpy(state.data(), new_state.const_data_ptr<float>(), state.size() * sizeof(float));
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    return stats(us);
  };
  auto runtime = [&] {
    std::vector<double> us;
    us.reserve(items.size());
    fmrl_session* session = nullptr;
    if (fmrl_session_new(rec, &session) != FMRL_OK) fail(fmrl_last_error());
    const int k = std::min(10, k_max);
    std::vector<int64_t> top(k);
    std::vector<float> scores(k);
    for (int64_t index : items) {
      const auto t0 = Clock::now();
      size_t count = k;
      if (fmrl_recommend(rec, session, k, 0, nullptr, scores.data(), top.data(), &count) != FMRL_OK ||
          fmrl_observe_index(rec, session, index) != FMRL_OK)
        fail(fmrl_last_error());
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    fmrl_session_free(session);
    return stats(us);
  };
  std::vector<double> bare_p50, bare_mean, rt_p50, rt_mean;
  for (int r = 0; r < repeats; ++r) {
    const Stats b = bare(), t = runtime();
    bare_p50.push_back(b.p50), bare_mean.push_back(b.mean), rt_p50.push_back(t.p50), rt_mean.push_back(t.mean);
  }
  const nlohmann::ordered_json result = {
      {"bundle", bundle}, {"stream", stream}, {"events", items.size()}, {"repeats", repeats}, {"threads", threads},
      {"granularity", s}, {"num_items", fmrl_num_items(rec)},
      {"bare_p50_us", median(bare_p50)}, {"bare_mean_us", median(bare_mean)},
      {"runtime_p50_us", median(rt_p50)}, {"runtime_mean_us", median(rt_mean)},
      {"added_p50_us", median(rt_p50) - median(bare_p50)},
      {"rss_before_open_bytes", rss_before_open}, {"rss_after_open_bytes", rss_after_open},
      {"state_bytes", fmrl_state_bytes(rec)}, {"heap_bytes_per_live_session", heap_per_session},
      {"per_repeat", {{"bare_p50_us", bare_p50}, {"runtime_p50_us", rt_p50}}}};
  std::printf("%-28s %10s %10s\n", "per event (median of repeats)", "p50 us", "mean us");
  std::printf("%-28s %10.1f %10.1f\n", "bare ExecuTorch call", median(bare_p50), median(bare_mean));
  std::printf("%-28s %10.1f %10.1f\n", "fmrl_recommend + observe", median(rt_p50), median(rt_mean));
  std::printf("%-28s %10.1f\n", "added by the C runtime", median(rt_p50) - median(bare_p50));
  std::printf("RSS before / after fmrl_open: %ld / %ld bytes; session: %zu state bytes, %.1f heap bytes each\n",
              rss_before_open, rss_after_open, fmrl_state_bytes(rec), heap_per_session);
  if (!json_out.empty()) std::ofstream(json_out) << result.dump(2) << "\n";
  fmrl_close(rec);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
