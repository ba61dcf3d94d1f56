// The CMGM attention-map branch in one pass over memory (inference):
//   out = ReLU(conv3x3_h->h(A + A^T) * bn_scale + bn_shift)
// with the BatchNorm already folded into the weight (h, h, 3, 3) and bias (h).
// A is the (B, h, N, N) softmax matrix. The map is processed in T x T tiles:
// each tile of A + A^T, with a one-pixel halo (zero outside the map), is built
// in a small buffer (the A^T half read as rows of A and transposed in registers),
// then the h output channels are accumulated from it, W pixels per SIMD
// register (W = 16 on AVX-512, 8 on AVX2), in blocks of output channels and
// pixels sized to the target's register file, and written once. A + A^T is symmetric: the tile at (J, I)
// is the transpose of the one at (I, J), so tiles are done in mirrored pairs
// and A is read from memory once. The map can be written with streaming
// (non-temporal) stores: no line of it is read into the cache before it is
// written, which halves its traffic where memory bounds the kernel; whether
// that pays depends on the CPU's write-combining, so the stage race decides.
//
// The tiles of A + A^T come from a stored A (StoredMatrix) or are recomputed
// from the attention's operands and row statistics (RecomputedMatrix): each
// tile's scores q_i . k_j and exp(score - max) * inverse, as the attention kernel
// computes them, so that A is never written to memory nor read back.
#include <algorithm>
#include <utility>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace {

using cmgm::load;
using cmgm::to_float;
using cmgm::vf;
using cmgm::vi;
using cmgm::W;

constexpr int64_t T = cmgm::kMapTile;  // tile side (pixels): 32 / W vectors per row
constexpr int64_t P = T + 2;           // padded tile side
constexpr int64_t PV = cmgm::kEdge;    // a padded tile row in whole vectors

// s = A + A^T over a tile at the border of the map, with its one-pixel halo (zero outside the map).
template <typename scalar_t>
void load_edge_tile(const scalar_t* a, float* s, int64_t n, int64_t i0, int64_t j0) {
  for (int64_t r = 0; r < P; ++r) {
    const int64_t i = i0 + r - 1;
    for (int64_t q = 0; q < P; ++q) {
      const int64_t j = j0 + q - 1;
      const bool inside = i >= 0 && i < n && j >= 0 && j < n;
      s[r * P + q] = inside ? to_float(a[i * n + j]) + to_float(a[j * n + i]) : 0.f;
    }
  }
}

// dst[r][q] (+)= src[q][r] over the 32 x 32 core of a padded tile (rows and
// columns 1..32): read as rows of src, transposed in registers W x W at a time.
template <bool accumulate, typename scalar_t>
void transpose_core(const scalar_t* src, int64_t stride, float* dst) {
  for (int64_t R = 0; R < T; R += W) {
    for (int64_t Q = 0; Q < T; Q += W) {
      vf rows[W];  // rows[t] = src[Q + t][R ...]; after the transpose rows[u] = src[Q ...][R + u]
      for (int t = 0; t < W; ++t) rows[t] = load(src + (Q + t) * stride + R);
      cmgm::transpose(rows);
      for (int u = 0; u < W; ++u) {
        float* line = dst + (1 + R + u) * P + 1 + Q;
        cmgm::store(line, accumulate ? load(line) + rows[u] : rows[u]);
      }
    }
  }
}

// s = A + A^T over an interior tile and its halo. The direct half is copied
// row by row, the transposed core comes from transpose_core, the ring is scalar.
template <typename scalar_t>
void load_tile(const scalar_t* a, float* s, int64_t n, int64_t i0, int64_t j0) {
  if (i0 < 1 || j0 < 1 || i0 + T + 1 > n || j0 + T + 1 > n) return load_edge_tile(a, s, n, i0, j0);
  for (int64_t r = 0; r < P; ++r) {
    const scalar_t* direct = a + (i0 + r - 1) * n + j0 - 1;
    for (int64_t q = 0; q < T; q += W) cmgm::store(s + r * P + q, load(direct + q));
    for (int64_t q = T; q < P; ++q) s[r * P + q] = to_float(direct[q]);
  }
  transpose_core<true>(a + j0 * n + i0, n, s);
  auto add_mirrored = [&](int64_t r, int64_t q) { s[r * P + q] += to_float(a[(j0 + q - 1) * n + i0 + r - 1]); };
  for (int64_t q = 0; q < P; ++q) add_mirrored(0, q), add_mirrored(P - 1, q);
  for (int64_t r = 1; r < P - 1; ++r) add_mirrored(r, 0), add_mirrored(r, P - 1);
}

// A + A^T is symmetric, so the padded tile at (j0, i0) is the transpose of the one at (i0, j0).
void transpose_tile(const float* s, float* t) {
  transpose_core<false>(s + P + 1, P, t);
  for (int64_t q = 0; q < P; ++q) t[q] = s[q * P], t[(P - 1) * P + q] = s[q * P + P - 1];
  for (int64_t r = 1; r < P - 1; ++r) t[r * P] = s[r], t[r * P + P - 1] = s[(P - 1) * P + r];
}

// One row of a tile: OC output channels (o0 ...) of G * W pixels, accumulated
// in registers (H, OC and G known at compile time so the accumulators stay in them).
template <int H, int OC, int G, bool streaming>
inline void row_block(const float* tile, const float* Wt, const float* bias, float* out,
                      int64_t n, int64_t ii, int64_t jv, int64_t width, int64_t out_offset, int o0) {
  vf acc[OC][G];
  for (int o = 0; o < OC; ++o)
    for (int g = 0; g < G; ++g) acc[o][g] = cmgm::splat(bias[o0 + o]);
  for (int c = 0; c < H; ++c) {
    for (int di = 0; di < 3; ++di) {
      const float* line = tile + c * P * P + (ii + di) * P + jv;
      for (int dj = 0; dj < 3; ++dj) {
        vf v[G];
        for (int g = 0; g < G; ++g) v[g] = load(line + dj + W * g);
        const float* w = Wt + ((c * 3 + di) * 3 + dj) * H + o0;
        for (int o = 0; o < OC; ++o)
          for (int g = 0; g < G; ++g) acc[o][g] += w[o] * v[g];
      }
    }
  }
  for (int o = 0; o < OC; ++o) {
    float* dst = out + out_offset + (o0 + o) * n * n;
    for (int g = 0; g < G; ++g) {
      const vf value = cmgm::relu(acc[o][g]);
      if (W * g + W <= width) {
        if (streaming) {
          cmgm::store_streaming(dst + W * g, value);
        } else {
          cmgm::store(dst + W * g, value);
        }
      } else {
        for (int k = 0; W * g + k < width; ++k) dst[W * g + k] = value[k];
      }
    }
  }
}

// Register blocks: OC output channels x G vectors of pixels per step. With 32
// zmm registers all H channels fit (up to 16 accumulators); with 16 ymm
// registers at most 8 accumulators, so H = 16 is done in two halves.
template <int H>
struct Blocking {
  static constexpr int OC = W == 16 ? H : (H < 8 ? H : 8);
  static constexpr int G = W == 16 ? (H <= 8 ? 2 : 1) : (OC >= 8 ? 1 : OC >= 4 ? 2 : 4);
  static_assert(G * W <= T, "a register block is at most one tile row");
};

// The rows of A that load_tile reads for the pair at (i0, j0), handed out a
// few at a time to be prefetched while the previous pair is being convolved:
// A's short row segments, one page apart, are otherwise fetched at the
// latency of memory rather than its bandwidth.
template <typename scalar_t>
class RowPrefetcher {
 public:
  void plan(const scalar_t* a, int64_t heads, int64_t n, int64_t i0, int64_t j0) {
    rows_.clear();
    next_ = 0;
    for (int64_t c = 0; c < heads; ++c) {
      const scalar_t* plane = a + c * n * n;
      for (int64_t r = std::max<int64_t>(i0 - 1, 0); r < std::min(i0 + T + 1, n); ++r) rows_.push_back(plane + r * n + std::max<int64_t>(j0 - 1, 0));
      for (int64_t r = std::max<int64_t>(j0 - 1, 0); r < std::min(j0 + T + 1, n); ++r) rows_.push_back(plane + r * n + std::max<int64_t>(i0 - 1, 0));
    }
  }
  void step(size_t count) {
    for (const size_t end = std::min(rows_.size(), next_ + count); next_ < end; ++next_) {
      const char* row = reinterpret_cast<const char*>(rows_[next_]);
      for (size_t byte = 0; byte < P * sizeof(scalar_t); byte += 64) __builtin_prefetch(row + byte);
    }
  }
  size_t size() const { return rows_.size(); }

 private:
  std::vector<const scalar_t*> rows_;
  size_t next_ = 0;
};

// All H output channels of one tile from its padded input tile; calls
// source.after_row() after each output row.
template <int H, bool streaming, typename Source>
void convolve_tile(const float* tile, const float* Wt, const float* bias, float* out, int64_t n, int64_t b, int64_t i0, int64_t j0,
                   Source& source) {
  constexpr int OC = Blocking<H>::OC, G = Blocking<H>::G;
  const int64_t rows = std::min(T, n - i0), cols = std::min(T, n - j0);
  for (int64_t ii = 0; ii < rows; ++ii) {
    for (int64_t jv = 0; jv < cols; jv += W * G)
      for (int o0 = 0; o0 < H; o0 += OC)
        row_block<H, OC, G, streaming>(tile, Wt, bias, out, n, ii, jv, cols - jv, (b * H * n + i0 + ii) * n + j0 + jv, o0);
    source.after_row();
  }
}

// A stored softmax matrix A (B, h, N, N): tiles of A + A^T read from it, the
// rows of the next pair prefetched a share at a time after each output row.
template <typename scalar_t>
class StoredMatrix {
 public:
  StoredMatrix(const scalar_t* A, int64_t heads, int64_t n) : A_(A), heads_(heads), n_(n) {}

  void tile(int64_t b, int64_t c, float* s, int64_t i0, int64_t j0) { load_tile(plane(b) + c * n_ * n_, s, n_, i0, j0); }

  // The pair at (b, i0, j0) comes next; `rows` output rows come before it.
  void plan(int64_t b, int64_t i0, int64_t j0, int64_t rows) {
    prefetcher_.plan(plane(b), heads_, n_, i0, j0);
    per_row_ = (prefetcher_.size() + rows - 1) / rows;
  }

  void after_row() { prefetcher_.step(per_row_); }

 private:
  const scalar_t* plane(int64_t b) const { return A_ + b * heads_ * n_ * n_; }

  const scalar_t* A_;
  int64_t heads_, n_;
  RowPrefetcher<scalar_t> prefetcher_;
  size_t per_row_ = 0;
};

// The softmax matrix of cmgm::AttentionRows, recomputed tile by tile: for the
// pair at (I, J), the matrix over I's rows and J's columns and over J's rows and
// I's columns (each with the one-pixel halo), then s = A + A^T from the two.
class RecomputedMatrix {
 public:
  explicit RecomputedMatrix(const cmgm::AttentionRows& rows) : R_(rows), direct_(P * PV), mirrored_(P * PV) {
    for (int k = 0; k < W; ++k) lane_[k] = k;
  }

  void tile(int64_t b, int64_t c, float* s, int64_t i0, int64_t j0) {
    const int64_t bh = b * R_.heads + c;
    softmax_block(bh, i0, j0, direct_.data());
    if (i0 == j0) return add_transposed(direct_.data(), direct_.data(), s);
    softmax_block(bh, j0, i0, mirrored_.data());
    add_transposed(direct_.data(), mirrored_.data(), s);
  }

  void plan(int64_t, int64_t, int64_t, int64_t) {}
  void after_row() {}

 private:
  // block[r][q] = A[r0 - 1 + r][c0 - 1 + q] for r, q < P (zero outside the matrix), computed as the
  // attention kernel computes it: two partial sums of the scores, exp(score - max), times 1 / sum.
  // The 32 core columns a few rows at a time (their exponentials' long dependency chains overlap),
  // the two halo columns as vectors down the rows (from q transposed): no lane computes a column twice.
  void softmax_block(int64_t bh, int64_t r0, int64_t c0, float* block) const {
    constexpr int ROWS = W == 16 ? 2 : 1;  // ROWS x CORE x 2 accumulators: 8 of 32 zmm, 8 of 16 ymm registers
    constexpr int64_t CORE = T / W, DOWN = (P + W - 1) / W;  // vectors across the core, vectors down the rows
    static_assert(P % ROWS == 0 && T % W == 0, "whole groups of rows and vectors");
    const int64_t n = R_.n;
    const float* kT = R_.kT.data() + bh * R_.d_pad * R_.stride + cmgm::kEdge;
    const float* row_max = R_.row_max.data() + bh * R_.stride + cmgm::kEdge;
    const float* row_inverse = R_.row_inverse.data() + bh * R_.stride + cmgm::kEdge;
    vi inside[CORE];
    for (int64_t v = 0; v < CORE; ++v) inside[v] = lane_ + static_cast<int32_t>(c0 + v * W) < static_cast<int32_t>(n);
    for (int64_t r = 0; r < P; r += ROWS) {
      const float* q[ROWS];
      vf shift[ROWS];
      float inverse[ROWS];
      vi keep[ROWS][CORE];  // rows outside the matrix are zero
      for (int k = 0; k < ROWS; ++k) {
        const int64_t i = r0 - 1 + r + k, row = std::clamp<int64_t>(i, 0, n - 1);
        q[k] = R_.q.data() + (bh * n + row) * R_.d_pad;
        shift[k] = cmgm::splat(row_max[row]);
        inverse[k] = row_inverse[row];
        for (int64_t v = 0; v < CORE; ++v) keep[k][v] = i >= 0 && i < n ? inside[v] : vi{};
      }
      vf s0[ROWS][CORE] = {}, s1[ROWS][CORE] = {};
      for (int64_t c = 0; c < R_.d_pad; c += 2) {
        for (int64_t v = 0; v < CORE; ++v) {
          const vf k0 = load(kT + c * R_.stride + c0 + v * W), k1 = load(kT + (c + 1) * R_.stride + c0 + v * W);
          for (int k = 0; k < ROWS; ++k) s0[k][v] += q[k][c] * k0, s1[k][v] += q[k][c + 1] * k1;
        }
      }
      for (int k = 0; k < ROWS; ++k)
        for (int64_t v = 0; v < CORE; ++v) {
          const vf a = cmgm::expv((s0[k][v] + s1[k][v]) - shift[k]) * inverse[k];
          cmgm::store(block + (r + k) * PV + 1 + v * W, reinterpret_cast<vf>(reinterpret_cast<vi>(a) & keep[k][v]));
        }
    }
    // The halo columns c0 - 1 and c0 + T: rows r0 - 1 + lane down each vector, the scores from q^T and k's column.
    const float* qT = R_.qT.data() + bh * R_.d_pad * R_.stride + cmgm::kEdge + r0 - 1;
    for (const int64_t q_at : {int64_t{0}, P - 1}) {
      const int64_t j = c0 - 1 + q_at;
      const bool column_inside = j >= 0 && j < n;
      for (int64_t v = 0; v < DOWN; ++v) {
        vf s0 = {}, s1 = {};
        for (int64_t c = 0; c < R_.d_pad; c += 2) {
          s0 += load(qT + c * R_.stride + v * W) * kT[c * R_.stride + j];
          s1 += load(qT + (c + 1) * R_.stride + v * W) * kT[(c + 1) * R_.stride + j];
        }
        const vf a = cmgm::expv((s0 + s1) - load(row_max + r0 - 1 + v * W)) * load(row_inverse + r0 - 1 + v * W);
        for (int k = 0; k < W && v * W + k < P; ++k) {
          const int64_t i = r0 - 1 + v * W + k;
          block[(v * W + k) * PV + q_at] = column_inside && i >= 0 && i < n ? a[k] : 0.f;
        }
      }
    }
  }

  // s = E + F^T over a padded tile; E and F have rows of PV floats.
  static void add_transposed(const float* E, const float* F, float* s) {
    for (int64_t r = 0; r < P; ++r)
      for (int64_t q = 0; q < P; ++q) s[r * P + q] = E[r * PV + q];
    transpose_core<true>(F + PV + 1, PV, s);
    auto add_mirrored = [&](int64_t r, int64_t q) { s[r * P + q] += F[q * PV + r]; };
    for (int64_t q = 0; q < P; ++q) add_mirrored(0, q), add_mirrored(P - 1, q);
    for (int64_t r = 1; r < P - 1; ++r) add_mirrored(r, 0), add_mirrored(r, P - 1);
  }

  const cmgm::AttentionRows& R_;
  std::vector<float> direct_, mirrored_;
  vi lane_;
};

// The weight is laid out (c, di, dj, o): the h weights of one tap are contiguous.
// Tiles are taken in mirrored pairs (I, J), (J, I): A is read (or recomputed)
// once for both, and the second tile of A + A^T is the first one transposed in cache.
// Each thread works on its own copy of `matrix` (a StoredMatrix or RecomputedMatrix).
template <int H, bool streaming, typename Source>
void fused_map_kernel(const Source& matrix, const float* Wt, const float* bias, float* out, int64_t batch, int64_t n, int threads) {
  const int64_t tiles = (n + T - 1) / T;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (I, J) with I <= J
  for (int64_t I = 0; I < tiles; ++I)
    for (int64_t J = I; J < tiles; ++J) pairs.emplace_back(I * T, J * T);
  const int64_t per_batch = static_cast<int64_t>(pairs.size());
  const double work_per_pair = 2.0 * T * T * H * H * 9;  // two tiles' 3x3 convolutions (less at the edges)
  cmgm::parallel_for(batch * per_batch, 1, threads, work_per_pair, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(H * P * P), mirrored(H * P * P);
    Source source = matrix;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / per_batch;
      const auto [i0, j0] = pairs[t % per_batch];
      for (int64_t c = 0; c < H; ++c) source.tile(b, c, tile.data() + c * P * P, i0, j0);
      const int64_t output_rows = (i0 == j0 ? 1 : 2) * std::min(T, n - i0);
      if (t + 1 < end) {
        const auto [next_i0, next_j0] = pairs[(t + 1) % per_batch];
        source.plan((t + 1) / per_batch, next_i0, next_j0, output_rows);
      }
      convolve_tile<H, streaming>(tile.data(), Wt, bias, out, n, b, i0, j0, source);
      if (i0 == j0) continue;
      for (int64_t c = 0; c < H; ++c) transpose_tile(tile.data() + c * P * P, mirrored.data() + c * P * P);
      convolve_tile<H, streaming>(mirrored.data(), Wt, bias, out, n, b, j0, i0, source);
    }
    if (streaming) cmgm::streaming_stores_done();
  });
}

// The weight (o, c, di, dj) laid out (c, di, dj, o): the h weights of one tap are contiguous.
std::vector<float> taps_major(const float* weight, int64_t heads) {
  std::vector<float> taps(heads * heads * 9);
  for (int64_t o = 0; o < heads; ++o)
    for (int64_t tap = 0; tap < heads * 9; ++tap) taps[tap * heads + o] = weight[o * heads * 9 + tap];
  return taps;
}

template <bool streaming, typename Source>
void dispatch_heads(const Source& matrix, const float* Wt, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
                    int threads) {
  switch (heads) {
    case 1: return fused_map_kernel<1, streaming>(matrix, Wt, bias, out, batch, n, threads);
    case 2: return fused_map_kernel<2, streaming>(matrix, Wt, bias, out, batch, n, threads);
    case 4: return fused_map_kernel<4, streaming>(matrix, Wt, bias, out, batch, n, threads);
    case 8: return fused_map_kernel<8, streaming>(matrix, Wt, bias, out, batch, n, threads);
    case 16: return fused_map_kernel<16, streaming>(matrix, Wt, bias, out, batch, n, threads);
  }
}

template <typename Source>
void dispatch_stores(const Source& matrix, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
                     int threads, bool streaming) {
  const std::vector<float> Wt = taps_major(weight, heads);
  if (streaming) return dispatch_heads<true>(matrix, Wt.data(), bias, out, batch, heads, n, threads);
  dispatch_heads<false>(matrix, Wt.data(), bias, out, batch, heads, n, threads);
}

}  // namespace

namespace cmgm {

bool fused_map_supports(int64_t heads) { return heads == 1 || heads == 2 || heads == 4 || heads == 8 || heads == 16; }

void fused_map(const float* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
               int threads, bool streaming) {
  dispatch_stores(StoredMatrix<float>(attn, heads, n), weight, bias, out, batch, heads, n, threads, streaming);
}

void fused_map(const bf16* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
               int threads, bool streaming) {
  dispatch_stores(StoredMatrix<bf16>(attn, heads, n), weight, bias, out, batch, heads, n, threads, streaming);
}

void fused_map(const AttentionRows& rows, const float* weight, const float* bias, float* out, int threads, bool streaming) {
  dispatch_stores(RecomputedMatrix(rows), weight, bias, out, rows.batch, rows.heads, rows.n, threads, streaming);
}

}  // namespace cmgm
