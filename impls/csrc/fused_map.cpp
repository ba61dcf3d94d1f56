// The CMGM attention-map branch in one pass over memory (inference):
//   out = ReLU(conv3x3_h->h(A + A^T) * bn_scale + bn_shift)
// with the BatchNorm already folded into the weight W (h, h, 3, 3) and bias (h).
// A is the (B, h, N, N) softmax matrix. The map is processed in T x T tiles:
// each tile of A + A^T, with a one-pixel halo (zero outside the map), is built
// in a small buffer (the A^T half read as rows of A and transposed in cache),
// then all h output channels are accumulated from it, 16 pixels at a time in
// SIMD registers, and written once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t T = 32;           // tile side (pixels)
constexpr int64_t P = T + 2;        // padded tile side
typedef float v16 __attribute__((vector_size(64)));  // 16 floats; GCC maps it to the machine's SIMD

inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }

// The same as load_tile's first step for tiles at the border of the map (zero outside it).
template <typename scalar_t>
void load_edge_tile(const scalar_t* a, float* s, float* scratch, int64_t n, int64_t i0, int64_t j0) {
  for (int64_t r = 0; r < P; ++r) {           // rows i0-1.. of A (direct) and rows j0-1.. (for A^T)
    const int64_t i = i0 + r - 1, j = j0 + r - 1;
    for (int64_t q = 0; q < P; ++q) {
      const int64_t jc = j0 + q - 1, ic = i0 + q - 1;
      s[r * P + q] = (i >= 0 && i < n && jc >= 0 && jc < n) ? static_cast<float>(a[i * n + jc]) : 0.f;
      scratch[r * P + q] = (j >= 0 && j < n && ic >= 0 && ic < n) ? static_cast<float>(a[j * n + ic]) : 0.f;
    }
  }
}

// s = A + A^T over the tile and its one-pixel halo, zero outside the map.
// The A^T half is read as rows of A into `scratch`, then transposed in cache.
template <typename scalar_t>
void load_tile(const scalar_t* a, float* s, float* scratch, int64_t n, int64_t i0, int64_t j0) {
  if (i0 >= 1 && j0 >= 1 && i0 + T + 1 <= n && j0 + T + 1 <= n) {  // interior: no bounds to check
    for (int64_t r = 0; r < P; ++r) {
      const scalar_t* direct = a + (i0 + r - 1) * n + j0 - 1;
      const scalar_t* mirrored = a + (j0 + r - 1) * n + i0 - 1;
      for (int64_t q = 0; q < P; ++q) {
        s[r * P + q] = static_cast<float>(direct[q]);
        scratch[r * P + q] = static_cast<float>(mirrored[q]);
      }
    }
  } else {
    load_edge_tile(a, s, scratch, n, i0, j0);
  }
  for (int64_t r = 0; r < P; ++r)             // s[ii][jj] += A[j0-1+jj][i0-1+ii] = scratch[jj][ii]
    for (int64_t q = 0; q < P; ++q) s[r * P + q] += scratch[q * P + r];
}


// One row of a tile: all H output channels of G * 16 pixels, accumulated in
// registers (H and G known at compile time so the accumulators stay in them).
template <int H, int G>
inline void row_block(const float* tile, const float* W, const float* bias, float* out,
                      int64_t n, int64_t ii, int64_t jv, int64_t width, int64_t out_offset) {
  v16 acc[H][G];
  for (int o = 0; o < H; ++o)
    for (int g = 0; g < G; ++g) acc[o][g] = v16{} + bias[o];
  for (int c = 0; c < H; ++c) {
    for (int di = 0; di < 3; ++di) {
      const float* line = tile + c * P * P + (ii + di) * P + jv;
      for (int dj = 0; dj < 3; ++dj) {
        v16 v[G];
        for (int g = 0; g < G; ++g) v[g] = load16(line + dj + 16 * g);
        const float* w = W + ((c * 3 + di) * 3 + dj) * H;
        for (int o = 0; o < H; ++o)
          for (int g = 0; g < G; ++g) acc[o][g] += w[o] * v[g];
      }
    }
  }
  for (int o = 0; o < H; ++o) {
    float* dst = out + out_offset + o * n * n;
    for (int g = 0; g < G; ++g)
      for (int k = 0; k < 16 && 16 * g + k < width; ++k) dst[16 * g + k] = std::max(acc[o][g][k], 0.f);
  }
}

// W is laid out (c, di, dj, o): the h weights of one tap are contiguous.
template <int H, typename scalar_t>
void fused_map_kernel(const scalar_t* A, const float* W, const float* bias, float* out, int64_t batch, int64_t n) {
  constexpr int G = H <= 8 ? 2 : 1;  // 16 x G pixels per step: H * G accumulators must fit the registers
  const int64_t tiles = (n + T - 1) / T;
  at::parallel_for(0, batch * tiles * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(H * P * P), scratch(P * P);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (tiles * tiles);
      const int64_t i0 = ((t / tiles) % tiles) * T;
      const int64_t j0 = (t % tiles) * T;
      const int64_t rows = std::min(T, n - i0);
      const int64_t cols = std::min(T, n - j0);
      for (int64_t c = 0; c < H; ++c)
        load_tile(A + (b * H + c) * n * n, tile.data() + c * P * P, scratch.data(), n, i0, j0);
      for (int64_t ii = 0; ii < rows; ++ii)
        for (int64_t jv = 0; jv < cols; jv += 16 * G)
          row_block<H, G>(tile.data(), W, bias, out, n, ii, jv, cols - jv, (b * H * n + i0 + ii) * n + j0 + jv);
    }
  });
}

template <typename scalar_t>
void dispatch_heads(const scalar_t* A, const float* W, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n) {
  switch (heads) {
    case 1: return fused_map_kernel<1>(A, W, bias, out, batch, n);
    case 2: return fused_map_kernel<2>(A, W, bias, out, batch, n);
    case 4: return fused_map_kernel<4>(A, W, bias, out, batch, n);
    case 8: return fused_map_kernel<8>(A, W, bias, out, batch, n);
    case 16: return fused_map_kernel<16>(A, W, bias, out, batch, n);
    default: TORCH_CHECK(false, "fused_map supports 1, 2, 4, 8 or 16 heads, not ", heads);
  }
}

}  // namespace

torch::Tensor fused_map(torch::Tensor attn, torch::Tensor weight, torch::Tensor bias) {
  TORCH_CHECK(attn.dim() == 4 && attn.size(2) == attn.size(3), "attn must be (B, h, N, N)");
  TORCH_CHECK(attn.device().is_cpu() && attn.is_contiguous(), "attn must be a contiguous CPU tensor");
  const int64_t batch = attn.size(0), heads = attn.size(1), n = attn.size(2);
  auto w = weight.to(torch::kFloat).permute({1, 2, 3, 0}).contiguous();  // (c, di, dj, o)
  auto b = bias.to(torch::kFloat).contiguous();
  TORCH_CHECK(w.numel() == heads * heads * 9 && b.numel() == heads, "weight must be (h, h, 3, 3), bias (h)");
  auto out = torch::empty({batch, heads, n, n}, attn.options().dtype(torch::kFloat));
  if (attn.scalar_type() == torch::kFloat) {
    dispatch_heads<float>(attn.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), batch, heads, n);
  } else {
    TORCH_CHECK(attn.scalar_type() == torch::kBFloat16, "attn must be float32 or bfloat16");
    dispatch_heads<c10::BFloat16>(attn.data_ptr<c10::BFloat16>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), batch, heads, n);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_map", &fused_map, "ReLU(conv3x3(A + A^T) with folded BatchNorm), one pass over A");
}
