// The one place that declares a private ExecuTorch class by hand (engine.cpp and the step benchmark use it).
#pragma once

#include <cstdint>

// ExecuTorch has no public call that resizes its thread pool, and the wheel ships libexecutorch_threadpool
// without extension/threadpool/threadpool.h. The declarations below are the part of that header which
// resizing needs, as of the ExecuTorch versions the guard names: before widening it, compare them with
// that version's threadpool.h.
#if FMRL_EXECUTORCH_VERSION_MAJOR != 1 || FMRL_EXECUTORCH_VERSION_MINOR != 5
#error "executorch_threadpool.hpp declares ExecuTorch 1.5's ThreadPool by hand: check them against this ExecuTorch's extension/threadpool/threadpool.h, then update the declarations and this guard"
#endif
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
