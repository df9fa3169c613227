// arcface's addition to burn-tch: libtorch's own profiler (Kineto: every aten operator on the
// calling thread, and every CUDA kernel through CUPTI), which tch 0.22 does not bind, so that a
// burn-on-LibTorch step can be taken apart kernel by kernel exactly as torch.profiler takes a
// PyTorch step apart. The trace is written in Chrome's trace format, as torch.profiler's
// export_chrome_trace writes it, with every allocation and free ("[memory]" events, as
// torch.profiler's profile_memory=True) so that peak memory can be compared the same way.
// Errors come back as a strdup'ed message, nullptr on success.
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>

namespace {
namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

std::set<impl::ActivityType> activities(int with_cuda) {
  std::set<impl::ActivityType> set{impl::ActivityType::CPU};
  if (with_cuda) set.insert(impl::ActivityType::CUDA);
  return set;
}
}  // namespace

extern "C" {

char* arcface_profiler_start(int with_cuda) {
  try {
    impl::ProfilerConfig config(impl::ProfilerState::KINETO, /*report_input_shapes=*/false,
                                /*profile_memory=*/true);
    prof::prepareProfiler(config, activities(with_cuda));
    prof::enableProfiler(config, activities(with_cuda));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// c10 counts CPU tensor bytes only while a profiler records memory, or from the moment this flag
// is on: set early, the "[memory]" events' "Total Allocated" on the CPU is every live tensor
// byte, not just those allocated since the profiler started (what CUDA's allocator reports
// anyway), so a CPU trace gives a peak comparable with torch.cuda.max_memory_allocated.
void arcface_track_cpu_memory() { FLAGS_caffe2_report_cpu_memory_usage = true; }

char* arcface_profiler_stop(const char* trace_path) {
  try {
    std::unique_ptr<prof::ProfilerResult> result = prof::disableProfiler();
    if (result) result->save(std::string(trace_path));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

}  // extern "C"
