// Softmax attention for small head dimensions, a few rows of the N x N matrix
// at a time in L1: S = q_i K^T, softmax, then A_i V, without a second pass
// over the matrix in memory. The attention matrix is written once (float32 or
// bfloat16) when the caller wants it, and not at all otherwise; instead the
// caller may keep the operands and each row's softmax statistics
// (AttentionRows), from which the map kernel recomputes the matrix tile by tile.
//
// Layout (AttentionRows): K and V are transposed to (d, N) and padded with zeros
// to whole vectors of the target's width W along N (16 floats on AVX-512, 8 on
// AVX2), with kEdge zero columns before and after, and to a multiple of 8 along d,
// so that every inner loop is whole vectors. Four query rows share each sweep over K and V: for
// N = 784 and d = 8 the two are 50 KB, more than L1, and reading them from L2
// once per row was the kernel's bottleneck.
#include <algorithm>
#include <limits>
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
  int64_t n, n_pad, d, d_pad, stride;  // stride: floats per row of kT and vT, column j at kEdge + j
};

Layout layout_of(const cmgm::AttentionInputs& in) {
  const int64_t n_pad = (in.n + W - 1) / W * W;
  return {in.n, n_pad, in.d, (in.d + D_ALIGN - 1) / D_ALIGN * D_ALIGN, cmgm::kEdge + n_pad + cmgm::kEdge};
}

// ROWS query rows of one head. For each: S = q K^T, softmax, A V. Writes the
// normalised rows of A to attn_rows[r] (when not null), A V to out_rows[r]
// (d floats each) and, when `stats` is not null, each row's maximum score and
// 1 / sum of its exponentials to stats[r][0] and stats[r][1]. kT and vT point
// at column 0 of their first row. `scratch` holds ROWS x n_pad floats.
template <bool streaming, typename attn_t>
void attend_rows(const float* const (&q)[ROWS], const float* kT, const float* vT, const Layout& L, float* scratch,
                 attn_t* const (&attn_rows)[ROWS], float* const (&out_rows)[ROWS], float* const (&stats)[ROWS][2]) {
  constexpr float lowest = -std::numeric_limits<float>::infinity();
  vf row_max[ROWS];
  for (int r = 0; r < ROWS; ++r) row_max[r] = splat(lowest);
  for (int64_t j = 0; j < L.n_pad; j += W) {
    vf s[ROWS][2] = {};  // two partial sums per row: independent chains hide the FMA latency
    for (int64_t c = 0; c < L.d_pad; c += 2) {
      const vf k0 = load(kT + c * L.stride + j), k1 = load(kT + (c + 1) * L.stride + j);
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
    if (stats[r][0] != nullptr) *stats[r][0] = shift[0], *stats[r][1] = inverse[r];
  }
  // A V from the unnormalised weights; the normalisation goes to the d outputs.
  for (int64_t c0 = 0; c0 < L.d_pad; c0 += DIM_CHUNK) {
    vf acc[ROWS][DIM_CHUNK] = {};
    for (int64_t j = 0; j < L.n_pad; j += W) {
      vf v[DIM_CHUNK];
      for (int c = 0; c < DIM_CHUNK; ++c) v[c] = load(vT + (c0 + c) * L.stride + j);
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
                float* out, float* row_max, float* row_inverse, int threads) {
  const int64_t groups = (L.n + ROWS - 1) / ROWS;
  const double work_per_group = 2.0 * ROWS * L.n * L.d;  // q k^T and A V for ROWS rows
  cmgm::parallel_for(batch * heads * groups, 16, threads, work_per_group, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(ROWS * L.n_pad);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t bh = g / groups, b = bh / heads, h = bh % heads;
      const float* q_rows[ROWS];
      attn_t* attn_rows[ROWS];
      float* out_rows[ROWS];
      float* stats[ROWS][2];
      for (int r = 0; r < ROWS; ++r) {
        const int64_t i = std::min((g % groups) * ROWS + r, L.n - 1);  // a short last group repeats its last row
        q_rows[r] = Q + (bh * L.n + i) * L.d_pad;
        attn_rows[r] = attn == nullptr ? nullptr : attn + (bh * L.n + i) * L.n;
        out_rows[r] = out + ((b * L.n + i) * heads + h) * L.d;  // token-major: (B, N, h, d)
        stats[r][0] = row_max == nullptr ? nullptr : row_max + bh * L.stride + cmgm::kEdge + i;
        stats[r][1] = row_inverse == nullptr ? nullptr : row_inverse + bh * L.stride + cmgm::kEdge + i;
      }
      const int64_t head = bh * L.d_pad * L.stride + cmgm::kEdge;
      attend_rows<streaming>(q_rows, K + head, V + head, L, scratch.data(), attn_rows, out_rows, stats);
    }
    if (streaming) cmgm::streaming_stores_done();
  });
}

// The operands in the kernel's layout, widened to float32 and zero padded: q as (B, h, N, d_pad),
// k and v transposed to (B, h, d_pad, stride), column j at kEdge + j.
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
      float* k_head = kT + bh * L.d_pad * L.stride + cmgm::kEdge;
      float* v_head = vT + bh * L.d_pad * L.stride + cmgm::kEdge;
      for (int64_t c = 0; c < L.d_pad; ++c)
        for (int64_t j = -cmgm::kEdge; j < L.stride - cmgm::kEdge; ++j) {
          const bool inside = c < L.d && j >= 0 && j < L.n;
          k_head[c * L.stride + j] = inside ? cmgm::to_float(K[b * s[1][0] + h * s[1][1] + j * s[1][2] + c * s[1][3]]) : 0.f;
          v_head[c * L.stride + j] = inside ? cmgm::to_float(V[b * s[2][0] + h * s[2][1] + j * s[2][2] + c * s[2][3]]) : 0.f;
        }
    }
  });
}

// Fills rows.q, kT and vT (every entry, padding included), keeping the vectors' memory from an earlier call.
void pad(const cmgm::AttentionInputs& in, const Layout& L, cmgm::AttentionRows& rows, int threads) {
  const int64_t heads = in.batch * in.heads;
  rows.batch = in.batch, rows.heads = in.heads, rows.n = in.n, rows.d_pad = L.d_pad, rows.stride = L.stride;
  rows.q.resize(heads * L.n * L.d_pad), rows.kT.resize(heads * L.d_pad * L.stride), rows.vT.resize(rows.kT.size());
  if (in.bfloat16) {
    pad_operands<cmgm::bf16>(in, L, rows.q.data(), rows.kT.data(), rows.vT.data(), threads);
  } else {
    pad_operands<float>(in, L, rows.q.data(), rows.kT.data(), rows.vT.data(), threads);
  }
}

template <typename attn_t>
void attention(const cmgm::AttentionInputs& in, attn_t* attn, float* out, int threads, bool streaming) {
  const Layout L = layout_of(in);
  cmgm::AttentionRows rows;
  pad(in, L, rows, threads);
  if (streaming) return attend_all<true>(rows.q.data(), rows.kT.data(), rows.vT.data(), L, in.batch, in.heads, attn, out, nullptr, nullptr, threads);
  attend_all<false>(rows.q.data(), rows.kT.data(), rows.vT.data(), L, in.batch, in.heads, attn, out, nullptr, nullptr, threads);
}

}  // namespace

namespace cmgm {

void softmax_attention(const AttentionInputs& inputs, float* attn, float* out, int threads, bool streaming) {
  attention(inputs, attn, out, threads, streaming);
}

void softmax_attention(const AttentionInputs& inputs, bf16* attn, float* out, int threads, bool streaming) {
  attention(inputs, attn, out, threads, streaming);
}

void softmax_attention_rows(const AttentionInputs& inputs, float* out, AttentionRows& rows, int threads) {
  const Layout L = layout_of(inputs);
  pad(inputs, L, rows, threads);
  const int64_t heads = inputs.batch * inputs.heads;
  rows.qT.resize(heads * L.d_pad * L.stride);
  rows.row_max.resize(heads * L.stride), rows.row_inverse.resize(heads * L.stride);
  parallel_for(heads, 1, threads, 0.0, [&](int64_t begin, int64_t end) {  // copies: one chunk a thread
    for (int64_t bh = begin; bh < end; ++bh) {
      for (int64_t c = 0; c < L.d_pad; ++c)
        for (int64_t i = -kEdge; i < L.stride - kEdge; ++i)
          rows.qT[(bh * L.d_pad + c) * L.stride + kEdge + i] = i >= 0 && i < L.n ? rows.q[(bh * L.n + i) * L.d_pad + c] : 0.f;
      for (int64_t i = -kEdge; i < L.stride - kEdge; ++i) {  // the padding; attend_all writes the rows
        if (i >= 0 && i < L.n) continue;
        rows.row_max[bh * L.stride + kEdge + i] = rows.row_inverse[bh * L.stride + kEdge + i] = 0.f;
      }
    }
  });
  attend_all<false>(rows.q.data(), rows.kT.data(), rows.vT.data(), L, inputs.batch, inputs.heads, static_cast<float*>(nullptr), out,
                    rows.row_max.data(), rows.row_inverse.data(), threads);
}

}  // namespace cmgm
