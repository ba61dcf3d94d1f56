// The CMGM attention-map branch in one pass over memory (inference):
//   out = ReLU(conv3x3_h->h(A + A^T) * bn_scale + bn_shift)
// with the BatchNorm already folded into the weight W (h, h, 3, 3) and bias (h).
// A is the (B, h, N, N) softmax matrix. The map is processed in T x T tiles:
// each tile of A + A^T (with a one-pixel halo, zero outside the map) is built
// in a small buffer (the transposed half read row by row), then all h output
// channels of the tile are computed from it and written once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace {

constexpr int64_t T = 32;           // tile side (pixels)
constexpr int64_t P = T + 2;        // padded tile side

template <typename scalar_t>
void fused_map_kernel(const scalar_t* A, const float* W, const float* bias, float* out,
                      int64_t batch, int64_t heads, int64_t n) {
  const int64_t tiles = (n + T - 1) / T;
  at::parallel_for(0, batch * tiles * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(heads * P * P);
    std::vector<float> acc(heads * T);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / (tiles * tiles);
      const int64_t i0 = ((t / tiles) % tiles) * T;
      const int64_t j0 = (t % tiles) * T;
      const int64_t rows = std::min(T, n - i0);
      const int64_t cols = std::min(T, n - j0);
      for (int64_t c = 0; c < heads; ++c) {
        const scalar_t* a = A + (b * heads + c) * n * n;
        float* s = tile.data() + c * P * P;
        // A[i, j] for the tile and its halo, row by row.
        for (int64_t ii = 0; ii < P; ++ii) {
          const int64_t i = i0 + ii - 1;
          for (int64_t jj = 0; jj < P; ++jj) {
            const int64_t j = j0 + jj - 1;
            s[ii * P + jj] = (i >= 0 && i < n && j >= 0 && j < n) ? static_cast<float>(a[i * n + j]) : 0.f;
          }
        }
        // + A[j, i]: read row j of A contiguously, add down column jj of the tile.
        for (int64_t jj = 0; jj < P; ++jj) {
          const int64_t j = j0 + jj - 1;
          if (j < 0 || j >= n) continue;
          const scalar_t* row = a + j * n;
          for (int64_t ii = 0; ii < P; ++ii) {
            const int64_t i = i0 + ii - 1;
            if (i >= 0 && i < n) s[ii * P + jj] += static_cast<float>(row[i]);
          }
        }
      }
      for (int64_t ii = 0; ii < rows; ++ii) {
        for (int64_t o = 0; o < heads; ++o) {
          float* __restrict__ ac = acc.data() + o * T;
          for (int64_t jj = 0; jj < T; ++jj) ac[jj] = bias[o];
        }
        for (int64_t c = 0; c < heads; ++c) {
          for (int64_t di = 0; di < 3; ++di) {
            const float* __restrict__ line = tile.data() + c * P * P + (ii + di) * P;
            for (int64_t o = 0; o < heads; ++o) {
              const float* w = W + ((o * heads + c) * 3 + di) * 3;
              const float w0 = w[0], w1 = w[1], w2 = w[2];
              float* __restrict__ ac = acc.data() + o * T;
              for (int64_t jj = 0; jj < T; ++jj) {
                ac[jj] += w0 * line[jj] + w1 * line[jj + 1] + w2 * line[jj + 2];
              }
            }
          }
        }
        for (int64_t o = 0; o < heads; ++o) {
          float* dst = out + ((b * heads + o) * n + i0 + ii) * n + j0;
          const float* ac = acc.data() + o * T;
          for (int64_t jj = 0; jj < cols; ++jj) dst[jj] = std::max(ac[jj], 0.f);
        }
      }
    }
  });
}

}  // namespace

torch::Tensor fused_map(torch::Tensor attn, torch::Tensor weight, torch::Tensor bias) {
  TORCH_CHECK(attn.dim() == 4 && attn.size(2) == attn.size(3), "attn must be (B, h, N, N)");
  TORCH_CHECK(attn.device().is_cpu() && attn.is_contiguous(), "attn must be a contiguous CPU tensor");
  const int64_t batch = attn.size(0), heads = attn.size(1), n = attn.size(2);
  auto w = weight.to(torch::kFloat).contiguous();
  auto b = bias.to(torch::kFloat).contiguous();
  TORCH_CHECK(w.numel() == heads * heads * 9 && b.numel() == heads, "weight must be (h, h, 3, 3), bias (h)");
  auto out = torch::empty({batch, heads, n, n}, attn.options().dtype(torch::kFloat));
  if (attn.scalar_type() == torch::kFloat) {
    fused_map_kernel<float>(attn.data_ptr<float>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), batch, heads, n);
  } else {
    TORCH_CHECK(attn.scalar_type() == torch::kBFloat16, "attn must be float32 or bfloat16");
    fused_map_kernel<c10::BFloat16>(attn.data_ptr<c10::BFloat16>(), w.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>(), batch, heads, n);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_map", &fused_map, "ReLU(conv3x3(A + A^T) with folded BatchNorm), one pass over A");
}
