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
#include <algorithm>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "parallel.h"

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
template <bool streaming, typename attn_t>
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
        if constexpr (streaming && std::is_same_v<attn_t, float>) {
          cmgm::store_streaming(attn_rows[r] + j, a);
        } else {
          store(attn_rows[r] + j, a);
        }
      } else {
        for (int64_t k = 0; j + k < L.n; ++k) cmgm::store_one(attn_rows[r] + j + k, a[k]);
      }
    }
  }
}

template <bool streaming, typename attn_t>
void attend_all(const float* Q, const float* K, const float* V, const Layout& L, int64_t batch, int64_t heads, attn_t* attn,
                float* out, int threads) {
  const int64_t groups = (L.n + ROWS - 1) / ROWS;
  const double work_per_group = 2.0 * ROWS * L.n * L.d;  // q k^T and A V for ROWS rows
  cmgm::parallel_for(batch * heads * groups, 16, threads, work_per_group, [&](int64_t begin, int64_t end) {
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
      attend_rows<streaming>(q_rows, K + bh * L.d_pad * L.n_pad, V + bh * L.d_pad * L.n_pad, L, scratch.data(), attn_rows, out_rows);
    }
    if (streaming) cmgm::streaming_stores_done();
  });
}

// The operands in the kernel's layout, widened to float32 and zero padded: q as (B, h, N, d_pad),
// k and v transposed to (B, h, d_pad, n_pad).
template <typename scalar_t>
void pad_operands(const cmgm::AttentionInputs& in, const Layout& L, float* q, float* kT, float* vT, int threads) {
  const auto* Q = static_cast<const scalar_t*>(in.q);
  const auto* K = static_cast<const scalar_t*>(in.k);
  const auto* V = static_cast<const scalar_t*>(in.v);
  const auto& s = in.strides;
  cmgm::parallel_for(in.batch * in.heads, 1, threads, 0.0, [&](int64_t begin, int64_t end) {  // copies: one chunk a thread
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / in.heads, h = bh % in.heads;
      float* q_head = q + bh * L.n * L.d_pad;
      for (int64_t i = 0; i < L.n; ++i)
        for (int64_t c = 0; c < L.d_pad; ++c)
          q_head[i * L.d_pad + c] = c < L.d ? cmgm::to_float(Q[b * s[0][0] + h * s[0][1] + i * s[0][2] + c * s[0][3]]) : 0.f;
      float* k_head = kT + bh * L.d_pad * L.n_pad;
      float* v_head = vT + bh * L.d_pad * L.n_pad;
      for (int64_t c = 0; c < L.d_pad; ++c)
        for (int64_t j = 0; j < L.n_pad; ++j) {
          const bool inside = c < L.d && j < L.n;
          k_head[c * L.n_pad + j] = inside ? cmgm::to_float(K[b * s[1][0] + h * s[1][1] + j * s[1][2] + c * s[1][3]]) : 0.f;
          v_head[c * L.n_pad + j] = inside ? cmgm::to_float(V[b * s[2][0] + h * s[2][1] + j * s[2][2] + c * s[2][3]]) : 0.f;
        }
    }
  });
}

template <typename attn_t>
void attention(const cmgm::AttentionInputs& in, attn_t* attn, float* out, int threads, bool streaming) {
  const Layout L{in.n, (in.n + W - 1) / W * W, in.d, (in.d + D_ALIGN - 1) / D_ALIGN * D_ALIGN};
  const int64_t operand = in.batch * in.heads * L.d_pad * L.n_pad;  // kT, vT; q is smaller (n <= n_pad)
  std::unique_ptr<float[]> q(new float[operand]), kT(new float[operand]), vT(new float[operand]);  // every entry written
  if (in.bfloat16) {
    pad_operands<cmgm::bf16>(in, L, q.get(), kT.get(), vT.get(), threads);
  } else {
    pad_operands<float>(in, L, q.get(), kT.get(), vT.get(), threads);
  }
  if (streaming) return attend_all<true>(q.get(), kT.get(), vT.get(), L, in.batch, in.heads, attn, out, threads);
  attend_all<false>(q.get(), kT.get(), vT.get(), L, in.batch, in.heads, attn, out, threads);
}

}  // namespace

namespace cmgm {

void softmax_attention(const AttentionInputs& inputs, float* attn, float* out, int threads, bool streaming) {
  attention(inputs, attn, out, threads, streaming);
}

void softmax_attention(const AttentionInputs& inputs, bf16* attn, float* out, int threads, bool streaming) {
  attention(inputs, attn, out, threads, streaming);
}

}  // namespace cmgm
