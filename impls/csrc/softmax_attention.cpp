// Softmax attention for small head dimensions, a few rows of the N x N matrix
// at a time in L1: S = q_i K^T, softmax, then A_i V, without a second pass
// over the matrix in memory. The attention matrix is written once (float32 or
// bfloat16) when the caller wants it, and not at all otherwise.
//
// Layout: K and V are transposed to (d, N) and padded with zeros to whole
// vectors of the target's width W along N (16 floats on AVX-512, 8 on AVX2)
// and to a multiple of 8 along d, so that every inner loop is whole vectors. Four query rows share each sweep over K and V: for
// N = 784 and d = 8 the two are 50 KB, more than L1, and reading them from L2
// once per row was the kernel's bottleneck.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "simd.h"

namespace {

using cmgm::load;
using cmgm::splat;
using cmgm::store;
using cmgm::vf;
using cmgm::W;

constexpr int ROWS = 4;  // query rows per sweep over K and V (which do not fit L1 together)
// Head dimensions accumulated together in A V: ROWS x DIM_CHUNK accumulators,
// 16 of the 32 zmm registers on AVX-512, 8 of the 16 ymm registers on AVX2.
constexpr int64_t DIM_CHUNK = W == 16 ? 4 : 2;
constexpr int64_t D_ALIGN = 8;    // the head dimension is padded to a multiple of this

struct Layout {
  int64_t n, n_pad, d, d_pad;
};

// ROWS query rows of one head. For each: S = q K^T, softmax, A V. Writes the
// normalised rows of A to attn_rows[r] (when not null) and A V to out_rows[r]
// (d floats each). `scratch` holds ROWS x n_pad floats.
template <typename attn_t>
void attend_rows(const float* const (&q)[ROWS], const float* kT, const float* vT, const Layout& L, float* scratch,
                 attn_t* const (&attn_rows)[ROWS], float* const (&out_rows)[ROWS]) {
  constexpr float lowest = -std::numeric_limits<float>::infinity();
  vf row_max[ROWS];
  for (int r = 0; r < ROWS; ++r) row_max[r] = splat(lowest);
  for (int64_t j = 0; j < L.n_pad; j += W) {
    vf s[ROWS][2] = {};  // two partial sums per row: independent chains hide the FMA latency
    for (int64_t c = 0; c < L.d_pad; c += 2) {
      const vf k0 = load(kT + c * L.n_pad + j), k1 = load(kT + (c + 1) * L.n_pad + j);
      for (int r = 0; r < ROWS; ++r) s[r][0] += q[r][c] * k0, s[r][1] += q[r][c + 1] * k1;
    }
    for (int r = 0; r < ROWS; ++r) {
      vf score = s[r][0] + s[r][1];
      for (int64_t k = L.n - j; k < W; ++k) score[k] = lowest;  // padding
      store(scratch + r * L.n_pad + j, score);
      row_max[r] = cmgm::maxv(row_max[r], score);
    }
  }
  float inverse[ROWS];
  for (int r = 0; r < ROWS; ++r) {
    float* row = scratch + r * L.n_pad;
    const vf shift = splat(cmgm::hmax(row_max[r]));
    vf total = vf{};
    for (int64_t j = 0; j < L.n_pad; j += W) {
      const vf e = cmgm::expv(load(row + j) - shift);
      store(row + j, e);
      total += e;
    }
    inverse[r] = 1.0f / cmgm::hsum(total);
  }
  // A V from the unnormalised weights; the normalisation goes to the d outputs.
  for (int64_t c0 = 0; c0 < L.d_pad; c0 += DIM_CHUNK) {
    vf acc[ROWS][DIM_CHUNK] = {};
    for (int64_t j = 0; j < L.n_pad; j += W) {
      vf v[DIM_CHUNK];
      for (int c = 0; c < DIM_CHUNK; ++c) v[c] = load(vT + (c0 + c) * L.n_pad + j);
      for (int r = 0; r < ROWS; ++r) {
        const vf e = load(scratch + r * L.n_pad + j);
        for (int c = 0; c < DIM_CHUNK; ++c) acc[r][c] += e * v[c];
      }
    }
    for (int r = 0; r < ROWS; ++r)
      for (int c = 0; c < DIM_CHUNK && c0 + c < L.d; ++c) out_rows[r][c0 + c] = cmgm::hsum(acc[r][c]) * inverse[r];
  }
  for (int r = 0; r < ROWS; ++r) {
    if (attn_rows[r] == nullptr) continue;
    const float* row = scratch + r * L.n_pad;
    for (int64_t j = 0; j < L.n_pad; j += W) {
      const vf a = load(row + j) * inverse[r];
      if (j + W <= L.n) {
        store(attn_rows[r] + j, a);
      } else {
        for (int64_t k = 0; j + k < L.n; ++k) attn_rows[r][j + k] = static_cast<attn_t>(a[k]);
      }
    }
  }
}

// (B, h, N, d) -> (B, h, d_pad, n_pad), zero padded.
at::Tensor transposed_padded(const at::Tensor& x, const Layout& L) {
  auto padded = at::zeros({x.size(0), x.size(1), L.d_pad, L.n_pad}, x.options().dtype(at::kFloat));
  padded.narrow(2, 0, L.d).narrow(3, 0, L.n).copy_(x.transpose(2, 3));
  return padded;
}

template <typename attn_t>
void attend_all(const at::Tensor& q, const at::Tensor& kT, const at::Tensor& vT, const Layout& L, attn_t* attn, float* out) {
  const int64_t batch = q.size(0), heads = q.size(1), groups = (L.n + ROWS - 1) / ROWS;
  const float* Q = q.data_ptr<float>();
  const float* K = kT.data_ptr<float>();
  const float* V = vT.data_ptr<float>();
  at::parallel_for(0, batch * heads * groups, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(ROWS * L.n_pad);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t bh = g / groups, b = bh / heads, h = bh % heads;
      const float* q_rows[ROWS];
      attn_t* attn_rows[ROWS];
      float* out_rows[ROWS];
      for (int r = 0; r < ROWS; ++r) {
        const int64_t i = std::min((g % groups) * ROWS + r, L.n - 1);  // a short last group repeats its last row
        q_rows[r] = Q + (bh * L.n + i) * L.d_pad;
        attn_rows[r] = attn == nullptr ? nullptr : attn + (bh * L.n + i) * L.n;
        out_rows[r] = out + ((b * L.n + i) * heads + h) * L.d;  // token-major: (B, N, h, d)
      }
      attend_rows(q_rows, K + bh * L.d_pad * L.n_pad, V + bh * L.d_pad * L.n_pad, L, scratch.data(), attn_rows, out_rows);
    }
  });
}

}  // namespace

// q, k, v: (B, h, N, d), any strides and floating dtype (copied to float32
// while padding); q already scaled. Returns (A V as (B, N, h * d) float32,
// A as (B, h, N, N) in attn_dtype, or an undefined tensor when want_attn is false).
std::tuple<at::Tensor, at::Tensor> softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     bool want_attn, at::ScalarType attn_dtype) {
  TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(), "q, k and v must be (B, h, N, d) of one shape");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "q, k and v must be CPU tensors");
  TORCH_CHECK(attn_dtype == at::kFloat || attn_dtype == at::kBFloat16, "the attention matrix is float32 or bfloat16");
  const int64_t batch = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  const Layout L{n, (n + W - 1) / W * W, d, (d + D_ALIGN - 1) / D_ALIGN * D_ALIGN};
  auto q_padded = at::zeros({batch, heads, n, L.d_pad}, q.options().dtype(at::kFloat));
  q_padded.narrow(3, 0, d).copy_(q);
  const auto kT = transposed_padded(k, L), vT = transposed_padded(v, L);
  auto out = at::empty({batch, n, heads * d}, q.options().dtype(at::kFloat));
  at::Tensor attn;
  if (!want_attn) {
    attend_all<float>(q_padded, kT, vT, L, nullptr, out.data_ptr<float>());
  } else if (attn_dtype == at::kFloat) {
    attn = at::empty({batch, heads, n, n}, q.options().dtype(at::kFloat));
    cmgm::prefer_huge_pages(attn.data_ptr(), attn.nbytes());
    attend_all(q_padded, kT, vT, L, attn.data_ptr<float>(), out.data_ptr<float>());
  } else {
    attn = at::empty({batch, heads, n, n}, q.options().dtype(at::kBFloat16));
    cmgm::prefer_huge_pages(attn.data_ptr(), attn.nbytes());
    attend_all(q_padded, kT, vT, L, attn.data_ptr<c10::BFloat16>(), out.data_ptr<float>());
  }
  return {out, attn};
}
