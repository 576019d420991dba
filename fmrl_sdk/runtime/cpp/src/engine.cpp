// The step engine: one ExecuTorch method of the bundle's program (fmrl_sdk/runtime/engine.py).
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <executorch/runtime/platform/runtime.h>

#include <cmath>

#include "internal.hpp"

#include "executorch_threadpool.hpp"

namespace fmrl {
namespace et = executorch::runtime;
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;

namespace {
[[noreturn]] void program_error(const std::string& what) { throw Error(FMRL_ERR_PROGRAM, what); }

std::string shape_tuple(const Tensor& t) {  // Python's tuple(o.shape)
  std::string out = "(";
  for (ssize_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + (t.dim() == 1 ? ",)" : ")");
}
}  // namespace

struct Engine::Impl {
  std::shared_ptr<const Blob> program_bytes;
  std::unique_ptr<executorch::extension::BufferDataLoader> loader;
  std::unique_ptr<et::Program> program;
  executorch::extension::MallocMemoryAllocator method_allocator, temp_allocator;
  std::vector<std::unique_ptr<uint8_t[]>> planned;
  std::vector<et::Span<uint8_t>> planned_spans;
  std::unique_ptr<et::HierarchicalAllocator> planned_allocator;
  std::unique_ptr<et::MemoryManager> memory;
  std::unique_ptr<et::Method> method;
  // inputs: x [1, s] and state [rows, s], in buffers of our own
  std::vector<float> x, state;
  TensorImpl::SizesType x_sizes[2], state_sizes[2];
  TensorImpl::DimOrderType dim_order[2] = {0, 1};
  TensorImpl::StridesType x_strides[2], state_strides[2];
  std::unique_ptr<TensorImpl> x_impl, state_impl;
  int32_t rows, size, k_max;
  int64_t num_items;
  TopkScratch topk;              // select_topk's scratch
  std::mutex mutex;
};

namespace {
std::mutex pool_mutex;
int pool_shares = 0;  // open recommenders (each holds a PoolShare)
}  // namespace

int PoolShare::thread_count() {
  et::runtime_init();
  return static_cast<int>(executorch::extension::get_thread_count());
}

PoolShare::PoolShare(int threads) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  const int now = threads > 0 ? thread_count() : 0;
  if (threads > 0 && threads != now) {
    // XNNPACK keeps the pool a program was loaded with: resizing frees it under every open recommender
    if (pool_shares == 0) {
      if (!executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)))
        throw Error(FMRL_ERR_PROGRAM, "ExecuTorch could not resize its thread pool to " + std::to_string(threads));
      if (logging())
        log_line(FMRL_LOG_INFO, "ExecuTorch thread pool resized from " + std::to_string(now) + " to " +
                               std::to_string(threads) + " threads");
    } else if (logging()) {
      log_line(FMRL_LOG_WARN, "threads = " + std::to_string(threads) + " ignored: " + std::to_string(pool_shares) +
                             " other recommender(s) open share ExecuTorch's process-wide pool, which keeps " +
                             std::to_string(now) + " threads");
    }
  }
  ++pool_shares;
}

PoolShare::~PoolShare() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  --pool_shares;
}

Engine::Engine(std::shared_ptr<const Blob> program_bytes, const std::string& method_name, int32_t rows,
               int32_t size, int32_t k_max, int64_t num_items)
    : impl_(std::make_unique<Impl>()) {
  et::runtime_init();
  Impl& m = *impl_;
  m.rows = rows, m.size = size, m.k_max = k_max, m.num_items = num_items;
  m.program_bytes = std::move(program_bytes);
  m.loader = std::make_unique<executorch::extension::BufferDataLoader>(m.program_bytes->data(),
                                                                       m.program_bytes->size());
  auto program = et::Program::load(m.loader.get(), et::Program::Verification::InternalConsistency);
  if (!program.ok())
    program_error("ExecuTorch could not load the program: error " + std::to_string(int(program.error())));
  m.program = std::make_unique<et::Program>(std::move(*program));
  auto meta = m.program->method_meta(method_name.c_str());
  if (!meta.ok()) program_error("the program has no method " + py_repr_str(method_name));
  for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
    const size_t bytes = static_cast<size_t>(*meta->memory_planned_buffer_size(i));
    m.planned.emplace_back(new uint8_t[bytes ? bytes : 1]);
    m.planned_spans.emplace_back(m.planned.back().get(), bytes);
  }
  m.planned_allocator = std::make_unique<et::HierarchicalAllocator>(
      et::Span<et::Span<uint8_t>>(m.planned_spans.data(), m.planned_spans.size()));
  m.memory = std::make_unique<et::MemoryManager>(&m.method_allocator, m.planned_allocator.get(), &m.temp_allocator);
  auto method = m.program->load_method(method_name.c_str(), m.memory.get());
  if (!method.ok())
    program_error("ExecuTorch could not load the program: method " + py_repr_str(method_name) + " failed with error " +
                  std::to_string(int(method.error())));
  m.method = std::make_unique<et::Method>(std::move(*method));
  if (logging()) {
    size_t planned_bytes = 0;
    for (const auto& span : m.planned_spans) planned_bytes += span.size();
    log_line(FMRL_LOG_INFO, "loaded the ExecuTorch program (" + std::to_string(m.program_bytes->size()) + " bytes): method " +
                           py_repr_str(method_name) + ", " + std::to_string(m.planned_spans.size()) +
                           " planned buffer(s) of " + std::to_string(planned_bytes) + " bytes, " +
                           std::to_string(PoolShare::thread_count()) + " CPU thread(s)");
  }
  if (m.method->inputs_size() != 2 || m.method->outputs_size() != 3)
    program_error("the program takes " + std::to_string(m.method->inputs_size()) + " inputs and returns " +
                  std::to_string(m.method->outputs_size()) + " outputs; expected (x, state) -> (scores, hidden, "
                  "new_state), format 3");
  m.x.assign(size, 0.0f);
  m.state.assign(static_cast<size_t>(rows) * size, 0.0f);
  m.x_sizes[0] = 1, m.x_sizes[1] = size, m.x_strides[0] = size, m.x_strides[1] = 1;
  m.state_sizes[0] = rows, m.state_sizes[1] = size, m.state_strides[0] = size, m.state_strides[1] = 1;
  m.x_impl = std::make_unique<TensorImpl>(ScalarType::Float, 2, m.x_sizes, m.x.data(), m.dim_order, m.x_strides);
  m.state_impl = std::make_unique<TensorImpl>(ScalarType::Float, 2, m.state_sizes, m.state.data(), m.dim_order,
                                              m.state_strides);
  // one call to check the program's outputs against the manifest (as PteEngine does)
  if (m.method->set_input(et::EValue(Tensor(m.x_impl.get())), 0) != et::Error::Ok ||
      m.method->set_input(et::EValue(Tensor(m.state_impl.get())), 1) != et::Error::Ok)
    program_error("the program does not take (x float32 [1, " + std::to_string(size) + "], state float32 [" +
                  std::to_string(rows) + ", " + std::to_string(size) + "])");
  if (m.method->execute() != et::Error::Ok) program_error("the program failed on its first call");
  const Tensor scores = m.method->get_output(0).toTensor(), hidden = m.method->get_output(1).toTensor();
  const Tensor new_state = m.method->get_output(2).toTensor();
  const bool ok = scores.dim() == 1 && scores.size(0) == num_items && new_state.dim() == 2 &&
                  new_state.size(0) == rows && new_state.size(1) == size && hidden.dim() == 1 &&
                  hidden.size(0) == size && scores.scalar_type() == ScalarType::Float &&
                  new_state.scalar_type() == ScalarType::Float && hidden.scalar_type() == ScalarType::Float;
  if (!ok)
    program_error("the program's outputs [" + shape_tuple(scores) + ", " + shape_tuple(hidden) + ", " +
                  shape_tuple(new_state) + "] do not match the manifest (scores [" + std::to_string(num_items) +
                  "], hidden [" + std::to_string(size) + "], state [" + std::to_string(rows) + ", " +
                  std::to_string(size) + "]): expected (scores, hidden, new_state), format 3");
}

Engine::~Engine() = default;

void Engine::step(const float* x, const float* state, float* scores, int32_t* indices, float* new_state,
                  float* hidden) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mutex);
  std::memcpy(m.x.data(), x, m.x.size() * 4);
  std::memcpy(m.state.data(), state, m.state.size() * 4);
  // set_input copies into the method's planned input buffers (or points at ours when inputs are not planned)
  if (m.method->set_input(et::EValue(Tensor(m.x_impl.get())), 0) != et::Error::Ok ||
      m.method->set_input(et::EValue(Tensor(m.state_impl.get())), 1) != et::Error::Ok)
    program_error("ExecuTorch refused the step's inputs");
  const et::Error err = m.method->execute();
  if (err != et::Error::Ok) program_error("ExecuTorch step failed with error " + std::to_string(int(err)));
  // dtypes were checked when the program was loaded; sizes again here, before anything is read or written
  const Tensor all = m.method->get_output(0).toTensor(), out_hidden = m.method->get_output(1).toTensor();
  const Tensor out_state = m.method->get_output(2).toTensor();
  if (all.numel() != m.num_items || out_hidden.numel() != m.size ||
      out_state.numel() != static_cast<ssize_t>(m.state.size()))
    program_error("the program's outputs [" + shape_tuple(all) + ", " + shape_tuple(out_hidden) + ", " +
                  shape_tuple(out_state) + "] do not match the manifest");
  select_topk(all.const_data_ptr<float>(), m.num_items, m.k_max, m.topk, scores, indices);
  for (int32_t r = 0; r < m.k_max; ++r) indices[r] += 1;  // positions 0..N-1 -> internal indices 1..N
  std::memcpy(new_state, out_state.const_data_ptr<float>(), m.state.size() * 4);
  std::memcpy(hidden, out_hidden.const_data_ptr<float>(), static_cast<size_t>(m.size) * 4);
}

}  // namespace fmrl
