// The fused kernels as torch operators, through LibTorch's stable ABI
// (torch/csrc/stable): checks and output allocation here, the work in the
// kernels of kernels.h over raw buffers with torch's thread count. The stable
// headers parse in under a second where torch/library.h took ~4 s, and nothing
// here goes through ATen's C++ API. The operators live in a namespace named
// after the extension (one per target), so two targets load side by side.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <tuple>
#include <vector>

#include "kernels.h"
#include "pool.h"

namespace {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

bool float_or_bfloat16(const Tensor& t) {
  return t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::BFloat16;
}

Tensor fused_map(Tensor attn, Tensor weight, Tensor bias, bool streaming) {
  STD_TORCH_CHECK(attn.dim() == 4 && attn.size(2) == attn.size(3), "attn must be (B, h, N, N)");
  STD_TORCH_CHECK(attn.is_cpu() && attn.is_contiguous(), "attn must be a contiguous CPU tensor");
  STD_TORCH_CHECK(float_or_bfloat16(attn), "attn must be float32 or bfloat16");
  const int64_t batch = attn.size(0), heads = attn.size(1), n = attn.size(2);
  STD_TORCH_CHECK(cmgm::fused_map_supports(heads), "fused_map supports 1, 2, 4, 8 or 16 heads, not ", heads);
  STD_TORCH_CHECK(weight.scalar_type() == ScalarType::Float && bias.scalar_type() == ScalarType::Float &&
                      weight.is_contiguous() && bias.is_contiguous() && weight.is_cpu() && bias.is_cpu(),
                  "weight and bias must be contiguous float32 CPU tensors");
  STD_TORCH_CHECK(weight.numel() == heads * heads * 9 && bias.numel() == heads, "weight must be (h, h, 3, 3), bias (h)");
  STD_TORCH_CHECK(!streaming || cmgm::kStreamingStores, "this build of the kernels has no streaming stores");
  Tensor out = torch::stable::new_empty(attn, {batch, heads, n, n}, ScalarType::Float);
  auto* out_data = static_cast<float*>(out.mutable_data_ptr());
  cmgm::prefer_huge_pages(out_data, out.numel() * sizeof(float));
  const auto* w = static_cast<const float*>(weight.const_data_ptr());
  const auto* b = static_cast<const float*>(bias.const_data_ptr());
  const int threads = static_cast<int>(torch::stable::get_num_threads());
  if (attn.scalar_type() == ScalarType::Float) {
    cmgm::fused_map(static_cast<const float*>(attn.const_data_ptr()), w, b, out_data, batch, heads, n, threads, streaming);
  } else {
    cmgm::fused_map(static_cast<const cmgm::bf16*>(attn.const_data_ptr()), w, b, out_data, batch, heads, n, threads, streaming);
  }
  return out;
}

// q, k, v: (B, h, N, d), any strides, float32 or bfloat16 (all one dtype, widened to float32
// inside); q already scaled. Returns (A V as (B, N, h * d) float32, A as (B, h, N, N) in
// attn_dtype, or an undefined tensor (None) when want_attn is false).
std::tuple<Tensor, Tensor> softmax_attention(Tensor q, Tensor k, Tensor v, bool want_attn, ScalarType attn_dtype) {
  STD_TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k and v must be (B, h, N, d)");
  for (int64_t dim = 0; dim < 4; ++dim)
    STD_TORCH_CHECK(k.size(dim) == q.size(dim) && v.size(dim) == q.size(dim), "q, k and v must be (B, h, N, d) of one shape");
  STD_TORCH_CHECK(q.is_cpu() && k.is_cpu() && v.is_cpu(), "q, k and v must be CPU tensors");
  STD_TORCH_CHECK(float_or_bfloat16(q) && k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                  "q, k and v must all be float32 or all bfloat16");
  STD_TORCH_CHECK(attn_dtype == ScalarType::Float || attn_dtype == ScalarType::BFloat16,
                  "the attention matrix is float32 or bfloat16");
  cmgm::AttentionInputs inputs{q.const_data_ptr(), k.const_data_ptr(), v.const_data_ptr(), q.scalar_type() == ScalarType::BFloat16,
                               {}, q.size(0), q.size(1), q.size(2), q.size(3)};
  const Tensor* operands[3] = {&q, &k, &v};
  for (int operand = 0; operand < 3; ++operand)
    for (int64_t dim = 0; dim < 4; ++dim) inputs.strides[operand][dim] = operands[operand]->stride(dim);
  const int64_t batch = inputs.batch, heads = inputs.heads, n = inputs.n, d = inputs.d;
  Tensor out = torch::stable::new_empty(q, {batch, n, heads * d}, ScalarType::Float);
  auto* out_data = static_cast<float*>(out.mutable_data_ptr());
  const int threads = static_cast<int>(torch::stable::get_num_threads());
  if (!want_attn) {
    cmgm::softmax_attention(inputs, static_cast<float*>(nullptr), out_data, threads);
    return {out, Tensor()};
  }
  Tensor attn = torch::stable::new_empty(q, {batch, heads, n, n}, attn_dtype);
  cmgm::prefer_huge_pages(attn.mutable_data_ptr(), attn.numel() * attn.element_size());
  if (attn_dtype == ScalarType::Float) {
    cmgm::softmax_attention(inputs, static_cast<float*>(attn.mutable_data_ptr()), out_data, threads);
  } else {
    cmgm::softmax_attention(inputs, static_cast<cmgm::bf16*>(attn.mutable_data_ptr()), out_data, threads);
  }
  return {out, attn};
}

// For the pool's tests: runs one chunk per element of ran_by_worker (int64) on `threads` threads
// and sets the element to 1 if a pool worker ran the chunk, 0 if the caller did. With hold_workers
// the workers claim nothing (as if descheduled); without it, on more than one thread, each chunk
// the caller runs waits (up to 10 s) until a worker has run one.
void pool_probe(Tensor ran_by_worker, int64_t threads, bool hold_workers) {
  STD_TORCH_CHECK(ran_by_worker.scalar_type() == ScalarType::Long && ran_by_worker.is_contiguous() && ran_by_worker.is_cpu(),
                  "ran_by_worker must be a contiguous int64 CPU tensor");
  STD_TORCH_CHECK(threads > 0, "threads must be positive");
  const int64_t chunks = ran_by_worker.numel();
  auto* flags = static_cast<int64_t*>(ran_by_worker.mutable_data_ptr());
  std::atomic<int64_t> worker_chunks{0};
  cmgm::hold_workers(hold_workers);
  cmgm::run_chunks(chunks, static_cast<int>(threads), [&](int64_t chunk) {
    flags[chunk] = cmgm::on_pool_worker() ? 1 : 0;
    if (flags[chunk]) {
      worker_chunks.fetch_add(1);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!hold_workers && threads > 1 && worker_chunks.load() == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  });
  cmgm::hold_workers(false);
}

// For the pool's tests: writes to granted (one int64) the threads a short call on `threads` threads
// would run on now (pool.h: short_call_threads_ready), as fused_forward asks it.
void pool_short_call(Tensor granted, int64_t threads) {
  STD_TORCH_CHECK(granted.scalar_type() == ScalarType::Long && granted.numel() == 1 && granted.is_cpu(), "granted must be one int64");
  STD_TORCH_CHECK(threads > 0, "threads must be positive");
  *static_cast<int64_t*>(granted.mutable_data_ptr()) = cmgm::short_call_threads_ready(static_cast<int>(threads)) ? threads : 1;
}

// For the pool's tests: a region of two chunks on two threads, the caller's chunk waiting (up to 10 s) for the
// worker's; writes to cpus (two int64) the CPU the caller ran its chunk on and the one the worker ran its on.
void pool_placement(Tensor cpus) {
  STD_TORCH_CHECK(cpus.scalar_type() == ScalarType::Long && cpus.numel() == 2 && cpus.is_contiguous() && cpus.is_cpu(),
                  "cpus must be two contiguous int64");
  auto* cpu = static_cast<int64_t*>(cpus.mutable_data_ptr());
  std::atomic<bool> worker_ran{false};
  cmgm::run_chunks(2, 2, [&](int64_t) {
    if (cmgm::on_pool_worker()) {
      cpu[1] = cmgm::current_cpu();
      worker_ran.store(true);
      return;
    }
    cpu[0] = cmgm::current_cpu();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!worker_ran.load() && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  });
}

}  // namespace

#define CMGM_DEFINE(ns, m) STABLE_TORCH_LIBRARY(ns, m)
#define CMGM_IMPLEMENT(ns, m) STABLE_TORCH_LIBRARY_IMPL(ns, CPU, m)

CMGM_DEFINE(CMGM_NAMESPACE, m) {
  m.def("fused_map(Tensor attn, Tensor weight, Tensor bias, bool streaming=False) -> Tensor");
  m.def("softmax_attention(Tensor q, Tensor k, Tensor v, bool want_attn, ScalarType attn_dtype) -> (Tensor, Tensor)");
  m.def("pool_probe(Tensor(a!) ran_by_worker, int threads, bool hold_workers) -> ()");
  m.def("pool_short_call(Tensor(a!) granted, int threads) -> ()");
  m.def("pool_placement(Tensor(a!) cpus) -> ()");
}

CMGM_IMPLEMENT(CMGM_NAMESPACE, m) {
  m.impl("fused_map", TORCH_BOX(&fused_map));
  m.impl("softmax_attention", TORCH_BOX(&softmax_attention));
  m.impl("pool_probe", TORCH_BOX(&pool_probe));
  m.impl("pool_short_call", TORCH_BOX(&pool_short_call));
  m.impl("pool_placement", TORCH_BOX(&pool_placement));
}
