// The whole fused forward (fwd mode) as one operator, with every parallel
// region on the kernels' pool (pool.h): the projections, the attention (the
// kernel, or ATen's matmuls and softmax by groups of heads, whichever the
// stage race chose), the output projection, the two convolutions of the
// feature branch and the map kernel. ATen's operators (layer norm, matmul, convolution) run
// single-threaded inside the pool's chunks: rows of tokens for the layer norms
// and projections, groups of output channels for the convolutions. No region
// of a call waits for a worker that has not started (PyTorch's OpenMP regions
// would: a sleeping or descheduled worker holds their closing barrier).
//
// Without `want_map` (feature mode) the call ends with the feature branch: the
// attention kernel writes no matrix and no map is made.
//
// With `recompute_map` the attention kernel writes no attention matrix at all:
// it keeps its operands and each row's softmax statistics, and the map kernel
// recomputes the matrix tile by tile from them. The attention matrix (when the
// kernel writes it) and the map are written with streaming stores when
// `streaming_stores` is set. Both are the stage race's choices.
//
// The chunks write their results through views made on the thread that runs
// them (from_blob), so a buffer made by a caller in inference mode is never
// changed in place from a worker thread, which is outside it.
#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/util/Exception.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "kernels.h"
#include "pool.h"

namespace {

using torch::headeronly::MemoryFormat;
using torch::headeronly::ScalarType;
using torch::stable::Tensor;
using torch::stable::detail::from;
using Sizes = std::vector<int64_t>;

Tensor view_of(void* data, const Sizes& sizes, const Sizes& strides, ScalarType dtype) {
  return torch::stable::from_blob(data, sizes, strides, torch::stable::Device(torch::headeronly::DeviceType::CPU), dtype);
}

Tensor layer_norm(const Tensor& input, int64_t channels, double eps) {
  std::array<StableIValue, 6> stack{from(input), from(Sizes{channels}), from(std::nullopt), from(std::nullopt), from(eps), from(false)};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::layer_norm", "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

void relu_(const Tensor& input) {
  std::array<StableIValue, 1> stack{from(input)};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::relu_", "", stack.data(), TORCH_ABI_VERSION));
  torch::stable::detail::to<Tensor>(stack[0]);  // the returned reference, released
}

Tensor add(const Tensor& a, const Tensor& b) {
  AtenTensorHandle sum = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_add_Tensor(a.get(), b.get(), 1.0, &sum));
  return Tensor(sum);
}

// out = bias + input @ weight^T, written into out.
void linear_into(const Tensor& out, const Tensor& input, const Tensor& weight, const Tensor& bias) {
  const Tensor weight_t = torch::stable::transpose(weight, 0, 1);
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_addmm_out(out.get(), bias.get(), input.get(), weight_t.get(), 1.0, 1.0));
}

Tensor conv3x3(const Tensor& input, const Tensor& weight, const Tensor& bias) {
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0};
  AtenTensorHandle bias_handle = bias.get(), result = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(
      aoti_torch_cpu_convolution(input.get(), weight.get(), &bias_handle, one, 2, one, 2, one, 2, 0, zero, 2, 1, &result));
  return Tensor(result);
}

Tensor softmax_float32(const Tensor& scores) {
  std::array<StableIValue, 3> stack{from(scores), from(int64_t{-1}), from(std::optional<ScalarType>(ScalarType::Float))};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::softmax", "int", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

Tensor rows(Tensor t, int64_t start, int64_t count) { return torch::stable::narrow(t, 0, start, count); }

Tensor cast(const Tensor& t, ScalarType dtype) { return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype); }

// The call's scratch buffers, one after another (64-byte aligned) in a uint8 tensor the caller keeps
// between calls, grown when a call needs more: calls reuse memory they already faulted in (at 48x48 the
// attention matrix alone is 170 MB, which a fresh allocation would fault in and zero on every call).
class WorkspaceLayout {
 public:
  // Reserves `bytes`; returns their offset from the base allocate() gives.
  int64_t reserve(int64_t bytes) {
    const int64_t offset = size_;
    size_ += (bytes + 63) / 64 * 64;
    return offset;
  }

  // Grows `workspace` to hold every reservation; returns the aligned base address.
  char* allocate(const Tensor& workspace) const {
    const int64_t needed = size_ + 64;
    if (workspace.numel() < needed) {
      std::array<StableIValue, 3> stack{from(workspace), from(Sizes{needed}), from(std::nullopt)};
      STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher("aten::resize_", "", stack.data(), TORCH_ABI_VERSION));
      torch::stable::detail::to<Tensor>(stack[0]);  // the returned reference, released
      cmgm::prefer_huge_pages(workspace.mutable_data_ptr(), needed);
    }
    auto* base = static_cast<char*>(workspace.mutable_data_ptr());
    return base + (64 - reinterpret_cast<uintptr_t>(base) % 64) % 64;
  }

 private:
  int64_t size_ = 0;
};

// The map's multiply-adds below which a call is short (about a millisecond on one core at 11x11's 8 M); a call
// without the map is judged by the same measure of its shape.
constexpr double kShortCallWork = 32e6;

struct Shape {
  int64_t batch, channels, height, width, tokens, heads;
};

// Chunk `chunk` of `parts` per image, as (image, first token, tokens).
std::array<int64_t, 3> token_rows(const Shape& s, int64_t parts, int64_t chunk) {
  const int64_t b = chunk / parts, part = chunk % parts;
  const int64_t begin = part * s.tokens / parts, end = (part + 1) * s.tokens / parts;
  return {b, begin, end - begin};
}

std::tuple<Tensor, Tensor> fused_forward(Tensor x, Tensor y, Tensor qv_w, Tensor qv_b, Tensor k_w, Tensor k_b, Tensor proj_w, Tensor proj_b,
                                         Tensor c1_w, Tensor c1_b, Tensor c2_w, Tensor c2_b, Tensor map_w, Tensor map_b, double eps_x,
                                         double eps_y, int64_t heads, bool kernel_attention, bool recompute_map, bool streaming_stores,
                                         bool want_map, Tensor workspace) {
  STD_TORCH_CHECK(x.dim() == 4 && y.dim() == 4 && x.is_cpu() && y.is_cpu(), "x and y must be (B, C, H, W) CPU tensors");
  STD_TORCH_CHECK(x.scalar_type() == ScalarType::Float && y.scalar_type() == ScalarType::Float, "x and y must be float32");
  for (int64_t dim = 0; dim < 4; ++dim) STD_TORCH_CHECK(x.size(dim) == y.size(dim), "x and y must have one shape");
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) * x.size(3), heads};
  STD_TORCH_CHECK(heads > 0 && s.channels % heads == 0, "heads must divide C");
  STD_TORCH_CHECK(!want_map || cmgm::fused_map_supports(heads), "the map kernel takes 1, 2, 4, 8 or 16 heads");
  const ScalarType dtype = qv_w.scalar_type();
  STD_TORCH_CHECK(workspace.scalar_type() == ScalarType::Byte && workspace.dim() == 1 && workspace.is_cpu(),
                  "the workspace must be a 1-D uint8 CPU tensor");
  STD_TORCH_CHECK(dtype == ScalarType::Float || dtype == ScalarType::BFloat16, "the weights must be float32 or bfloat16");
  STD_TORCH_CHECK(!streaming_stores || cmgm::kStreamingStores, "this build of the kernels has no streaming stores");
  STD_TORCH_CHECK(!recompute_map || kernel_attention, "the map recomputes the attention kernel's matrix: it needs kernel_attention");
  STD_TORCH_CHECK(want_map || (kernel_attention && !recompute_map), "a call without the map runs the attention kernel, storing no matrix");
  STD_TORCH_CHECK(map_w.scalar_type() == ScalarType::Float && map_b.scalar_type() == ScalarType::Float && map_w.is_contiguous() &&
                      map_b.is_contiguous() && map_w.numel() == heads * heads * 9 && map_b.numel() == heads,
                  "the map's weight must be (h, h, 3, 3) and its bias (h), contiguous float32");  // read as raw buffers
  x = torch::stable::contiguous(x);
  y = torch::stable::contiguous(y);
  const int requested = static_cast<int>(torch::stable::get_num_threads());
  const double map_work = static_cast<double>(s.batch) * heads * heads * 9 * s.tokens * s.tokens;
  const int threads = map_work < kShortCallWork && !cmgm::short_call_threads_ready(requested) ? 1 : requested;
  const cmgm::SingleThreadedLibraries one_thread;  // ATen inside this thread's chunks, as on the workers

  const int64_t B = s.batch, C = s.channels, N = s.tokens, H = s.height, W = s.width, d = C / heads;
  const int64_t row_chunks = B * threads, channel_chunks = std::min<int64_t>(threads, C);
  const int64_t bytes = dtype == ScalarType::Float ? 4 : 2;
  // The call's scratch in the workspace: q and v (rows of qv), k, the attention matrix, A V (mixed,
  // float32), the residual sum (fused) and the first convolution's output (g), both NHWC images.
  WorkspaceLayout layout;
  const int64_t qv_at = layout.reserve(B * N * 2 * C * bytes), k_at = layout.reserve(B * N * C * bytes);
  const int64_t attn_at = layout.reserve(recompute_map || !want_map ? 0 : B * heads * N * N * bytes), mixed_at = layout.reserve(B * N * C * 4);
  const int64_t fused_at = layout.reserve(B * N * C * bytes), g_at = layout.reserve(B * N * C * bytes);
  char* const base = layout.allocate(workspace);
  char *qv_data = base + qv_at, *k_data = base + k_at, *attn_data = base + attn_at, *fused_data = base + fused_at, *g_data = base + g_at;
  auto* mixed_data = reinterpret_cast<float*>(base + mixed_at);
  Tensor out = torch::stable::empty({B, C, H, W}, ScalarType::Float, std::nullopt, std::nullopt, std::nullopt, MemoryFormat::ChannelsLast);
  Tensor map = want_map ? torch::stable::new_empty(x, {B, heads, N, N}, ScalarType::Float) : Tensor();
  if (want_map) cmgm::prefer_huge_pages(map.mutable_data_ptr(), map.numel() * sizeof(float));
  auto* out_data = static_cast<float*>(out.mutable_data_ptr());
  auto* x_data = static_cast<float*>(x.mutable_data_ptr());
  auto* y_data = static_cast<float*>(y.mutable_data_ptr());
  // An image's tokens (N, C) read from the (B, C, H, W) input.
  auto tokens_of = [&](float* image, int64_t b, int64_t first, int64_t count) {
    return view_of(image + b * C * N + first, {count, C}, {1, N}, ScalarType::Float);
  };
  const Sizes nhwc{N * C, 1, W * C, C};  // (B, C', H, W) strides of a channel range of an NHWC buffer

  // Layer norms and the q, v and k projections, by rows of tokens.
  cmgm::run_chunks(row_chunks, threads, [&](int64_t chunk) {
    const auto [b, first, count] = token_rows(s, threads, chunk);
    const int64_t row = b * N + first;
    const Tensor xn = cast(layer_norm(tokens_of(x_data, b, first, count), C, eps_x), dtype);
    const Tensor yn = cast(layer_norm(tokens_of(y_data, b, first, count), C, eps_y), dtype);
    linear_into(view_of(qv_data + row * 2 * C * bytes, {count, 2 * C}, {2 * C, 1}, dtype), xn, qv_w, qv_b);
    linear_into(view_of(k_data + row * C * bytes, {count, C}, {C, 1}, dtype), yn, k_w, k_b);
  });

  // softmax(q k^T) and A V: q and v are the two halves of each qv row, (B, h, N, d) with strides.
  // What the map recomputes the matrix from, with recompute_map; kept by the calling thread, so that the
  // next call reuses its memory (fresh vectors cost 4 % of a 2-thread call at 11x11 and 28x28).
  thread_local cmgm::AttentionRows attention_rows;
  if (kernel_attention) {
    cmgm::AttentionInputs inputs{qv_data, k_data, qv_data + C * bytes, dtype == ScalarType::BFloat16,
                                 {{N * 2 * C, d, 2 * C, 1}, {N * C, d, C, 1}, {N * 2 * C, d, 2 * C, 1}}, B, heads, N, d};
    if (!want_map) {
      cmgm::softmax_attention(inputs, static_cast<float*>(nullptr), mixed_data, threads);
    } else if (recompute_map) {
      cmgm::softmax_attention_rows(inputs, mixed_data, attention_rows, threads);
    } else if (dtype == ScalarType::Float) {
      cmgm::softmax_attention(inputs, reinterpret_cast<float*>(attn_data), mixed_data, threads, streaming_stores);
    } else {
      cmgm::softmax_attention(inputs, reinterpret_cast<cmgm::bf16*>(attn_data), mixed_data, threads);
    }
  } else {  // ATen's matmuls and softmax (float32), by images and contiguous ranges of heads
    const int64_t parts = std::min<int64_t>(heads, std::max<int64_t>(1, threads));
    cmgm::run_chunks(B * parts, threads, [&](int64_t chunk) {
      const int64_t b = chunk / parts, first = chunk % parts * heads / parts, count = (chunk % parts + 1) * heads / parts - first;
      const int64_t token0 = b * N;
      const Tensor q = view_of(qv_data + (token0 * 2 * C + first * d) * bytes, {count, N, d}, {d, 2 * C, 1}, dtype);
      const Tensor k_heads = view_of(k_data + (token0 * C + first * d) * bytes, {count, N, d}, {d, C, 1}, dtype);
      const Tensor v = view_of(qv_data + (token0 * 2 * C + C + first * d) * bytes, {count, N, d}, {d, 2 * C, 1}, dtype);
      const Tensor probs = softmax_float32(torch::stable::matmul(q, torch::stable::transpose(k_heads, 1, 2)));
      Tensor attn_heads = view_of(attn_data + (b * heads + first) * N * N * bytes, {count, N, N}, {N * N, N, 1}, dtype);
      torch::stable::copy_(attn_heads, probs);
      Tensor mixed_heads = view_of(mixed_data + token0 * C + first * d, {count, N, d}, {d, C, 1}, ScalarType::Float);
      torch::stable::copy_(mixed_heads, torch::stable::matmul(cast(probs, dtype), v));
    });
  }

  // The output projection plus the residual x, by rows of tokens.
  cmgm::run_chunks(row_chunks, threads, [&](int64_t chunk) {
    const auto [b, first, count] = token_rows(s, threads, chunk);
    const int64_t row = b * N + first;
    const Tensor mixed_rows = cast(view_of(mixed_data + row * C, {count, C}, {C, 1}, ScalarType::Float), dtype);
    const Tensor residual = add(cast(tokens_of(x_data, b, first, count), dtype), proj_b);
    linear_into(view_of(fused_data + row * C * bytes, {count, C}, {C, 1}, dtype), mixed_rows, proj_w, residual);
  });

  // The feature branch's two 3x3 convolutions (BatchNorm folded), by groups of output channels.
  auto channels_of = [&](int64_t chunk) {
    const int64_t first = chunk * C / channel_chunks;
    return std::array<int64_t, 2>{first, (chunk + 1) * C / channel_chunks - first};
  };
  cmgm::run_chunks(channel_chunks, threads, [&](int64_t chunk) {
    const auto [first, count] = channels_of(chunk);
    const Tensor result = conv3x3(view_of(fused_data, {B, C, H, W}, nhwc, dtype), rows(c1_w, first, count), rows(c1_b, first, count));
    relu_(result);
    Tensor destination = view_of(g_data + first * bytes, {B, count, H, W}, nhwc, dtype);
    torch::stable::copy_(destination, result);
  });
  cmgm::run_chunks(channel_chunks, threads, [&](int64_t chunk) {
    const auto [first, count] = channels_of(chunk);
    const Tensor result = conv3x3(view_of(g_data, {B, C, H, W}, nhwc, dtype), rows(c2_w, first, count), rows(c2_b, first, count));
    relu_(result);
    const Tensor sum = add(result, view_of(fused_data + first * bytes, {B, count, H, W}, nhwc, dtype));
    Tensor destination = view_of(out_data + first, {B, count, H, W}, nhwc, ScalarType::Float);
    torch::stable::copy_(destination, sum);
  });

  if (!want_map) return {out, map};

  // The map branch, ReLU(BN(conv3x3(A + A^T))).
  const auto* w = static_cast<const float*>(map_w.const_data_ptr());
  const auto* bias = static_cast<const float*>(map_b.const_data_ptr());
  auto* map_data = static_cast<float*>(map.mutable_data_ptr());
  if (recompute_map) {
    cmgm::fused_map(attention_rows, w, bias, map_data, threads, streaming_stores);
  } else if (dtype == ScalarType::Float) {
    cmgm::fused_map(reinterpret_cast<const float*>(attn_data), w, bias, map_data, B, heads, N, threads, streaming_stores);
  } else {
    cmgm::fused_map(reinterpret_cast<const cmgm::bf16*>(attn_data), w, bias, map_data, B, heads, N, threads, streaming_stores);
  }
  return {out, map};
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(CMGM_NAMESPACE, m) {
  m.def(
      "fused_forward(Tensor x, Tensor y, Tensor qv_w, Tensor qv_b, Tensor k_w, Tensor k_b, Tensor proj_w, Tensor proj_b, "
      "Tensor c1_w, Tensor c1_b, Tensor c2_w, Tensor c2_b, Tensor map_w, Tensor map_b, float eps_x, float eps_y, int heads, "
      "bool kernel_attention, bool recompute_map, bool streaming_stores, bool want_map, Tensor(a!) workspace) "
      "-> (Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(CMGM_NAMESPACE, CPU, m) { m.impl("fused_forward", TORCH_BOX(&fused_forward)); }
