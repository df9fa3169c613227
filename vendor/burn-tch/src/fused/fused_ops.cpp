// arcface's addition to burn-tch: libtorch's own backward kernels for convolution and batch
// norm, and its fused SGD and AdamW, which tch 0.22 does not bind (its generator skips `convolution_backward` and
// `native_batch_norm_backward`). Tensors are passed as tch passes them: `at::Tensor*`; results
// are new `at::Tensor*` that tch::Tensor::from_ptr takes ownership of. Errors come back as a
// strdup'ed message (freed by the caller with arcface_free_error), nullptr on success.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <ATen/Functions.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <vector>

extern "C" {

void arcface_free_error(char* message) { std::free(message); }

char* arcface_convolution_backward(const at::Tensor* grad_output, const at::Tensor* input,
                                   const at::Tensor* weight, const int64_t* stride,
                                   const int64_t* padding, const int64_t* dilation, int64_t dims,
                                   int64_t groups, int want_input, int want_weight,
                                   at::Tensor** grad_input, at::Tensor** grad_weight) {
  try {
    std::vector<int64_t> output_padding(dims, 0);
    std::array<bool, 3> mask = {want_input != 0, want_weight != 0, false};
    auto result = at::convolution_backward(
        *grad_output, *input, *weight, c10::nullopt, at::IntArrayRef(stride, dims),
        at::IntArrayRef(padding, dims), at::IntArrayRef(dilation, dims), false, output_padding,
        groups, mask);
    if (want_input) *grad_input = new at::Tensor(std::get<0>(result));
    if (want_weight) *grad_weight = new at::Tensor(std::get<1>(result));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

char* arcface_batch_norm_backward(const at::Tensor* grad_output, const at::Tensor* input,
                                  const at::Tensor* weight, const at::Tensor* save_mean,
                                  const at::Tensor* save_invstd, double epsilon,
                                  at::Tensor** grad_input, at::Tensor** grad_weight,
                                  at::Tensor** grad_bias) {
  try {
    auto result = at::native_batch_norm_backward(
        *grad_output, *input, *weight, c10::nullopt, c10::nullopt, *save_mean, *save_invstd,
        true, epsilon, {true, true, true});
    *grad_input = new at::Tensor(std::get<0>(result));
    *grad_weight = new at::Tensor(std::get<1>(result));
    *grad_bias = new at::Tensor(std::get<2>(result));
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// SGD with momentum and weight decay over many parameters at once, in place, by libtorch's
// fused multi-tensor kernel (`torch.optim.SGD(fused=True)`): a handful of launches for the whole
// model where one parameter at a time costs six elementwise kernels each. Momentum buffers are
// kept flat by the caller and viewed in their parameter's shape here. `grad_scale` multiplies the
// gradients first (gradient clipping); `is_first_step` sets each buffer to its first gradient.
char* arcface_fused_sgd(const at::Tensor* const* params, const at::Tensor* const* grads,
                        const at::Tensor* const* buffers, int64_t count, double weight_decay,
                        double momentum, double lr, double grad_scale, int is_first_step) {
  try {
    std::vector<at::Tensor> p, g, b;
    p.reserve(count);
    g.reserve(count);
    b.reserve(count);
    for (int64_t i = 0; i < count; ++i) {
      p.push_back(*params[i]);
      g.push_back(grads[i]->contiguous());
      if (momentum != 0.0) b.push_back(buffers[i]->view(params[i]->sizes()));
    }
    if (grad_scale != 1.0) g = at::_foreach_mul(g, grad_scale);
    at::_fused_sgd_(p, g, b, weight_decay, momentum, lr, 0.0, false, false, is_first_step != 0,
                    c10::nullopt, c10::nullopt);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// AdamW (torch.optim.AdamW, amsgrad off) over many parameters at once, in place, by libtorch's
// fused kernel (`torch.optim.AdamW(fused=True)`, CUDA and CPU). Moments are kept flat by the
// caller and viewed in their parameter's shape here. `step` is t (1 for the first update), the
// same for every parameter: one step tensor serves them all (the kernel only reads it; PyTorch's
// optimizer increments its own before the call). `grad_scale` multiplies the gradients first
// (gradient clipping, as clip_grad_norm_'s _foreach_mul_; the kernel's own grad_scale divides,
// for AMP's loss scaling, and is left unset).
char* arcface_fused_adamw(const at::Tensor* const* params, const at::Tensor* const* grads,
                          const at::Tensor* const* exp_avgs, const at::Tensor* const* exp_avg_sqs,
                          int64_t count, double lr, double beta1, double beta2,
                          double weight_decay, double eps, double step, double grad_scale) {
  try {
    if (count == 0) return nullptr;
    std::vector<at::Tensor> p, g, m, v, steps;
    auto t = at::full({}, step, params[0]->options().dtype(at::kFloat));
    for (int64_t i = 0; i < count; ++i) {
      p.push_back(*params[i]);
      g.push_back(grads[i]->contiguous());
      m.push_back(exp_avgs[i]->view(params[i]->sizes()));
      v.push_back(exp_avg_sqs[i]->view(params[i]->sizes()));
      steps.push_back(t);
    }
    if (grad_scale != 1.0) g = at::_foreach_mul(g, grad_scale);
    at::_fused_adamw_(p, g, m, v, at::TensorList(), steps, lr, beta1, beta2, weight_decay, eps, false, false,
                      c10::nullopt, c10::nullopt);
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// Peak bytes allocated and reserved by libtorch's CUDA caching allocator on `device` since its
// last reset (torch.cuda.max_memory_allocated / max_memory_reserved); with `reset`, resets them
// (torch.cuda.reset_peak_memory_stats). Through c10's device-generic allocator interface, so
// this file needs no CUDA headers; an error where no CUDA allocator is registered.
char* arcface_cuda_memory_peaks(int64_t device, int reset, int64_t* allocated,
                                int64_t* reserved) {
  try {
    auto* allocator = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    auto index = static_cast<c10::DeviceIndex>(device);
    *allocated = 0;
    *reserved = 0;
    if (reset) {
      allocator->resetPeakStats(index);
      return nullptr;
    }
    auto stats = allocator->getDeviceStats(index);
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *allocated = stats.allocated_bytes[all].peak;
    *reserved = stats.reserved_bytes[all].peak;
    return nullptr;
  } catch (const std::exception& e) {
    return strdup(e.what());
  }
}

// torch.backends.mkldnn.enabled: whether libtorch's CPU convolutions may use oneDNN.
void arcface_set_mkldnn_enabled(int on) { at::globalContext().setUserEnabledMkldnn(on != 0); }
int arcface_mkldnn_enabled() { return at::globalContext().userEnabledMkldnn() ? 1 : 0; }

}  // extern "C"
