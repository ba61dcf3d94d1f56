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
// and A is read from memory once.
#include <algorithm>
#include <utility>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace {

using cmgm::load;
using cmgm::to_float;
using cmgm::vf;
using cmgm::W;

constexpr int64_t T = 32;           // tile side (pixels): 32 / W vectors per row
constexpr int64_t P = T + 2;        // padded tile side

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
template <int H, int OC, int G>
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
        cmgm::store(dst + W * g, value);
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

// All H output channels of one tile from its padded input tile; prefetches
// `per_row` planned rows of the next pair after each output row.
template <int H, typename scalar_t>
void convolve_tile(const float* tile, const float* Wt, const float* bias, float* out, int64_t n, int64_t b, int64_t i0, int64_t j0,
                   RowPrefetcher<scalar_t>& prefetcher, size_t per_row) {
  constexpr int OC = Blocking<H>::OC, G = Blocking<H>::G;
  const int64_t rows = std::min(T, n - i0), cols = std::min(T, n - j0);
  for (int64_t ii = 0; ii < rows; ++ii) {
    for (int64_t jv = 0; jv < cols; jv += W * G)
      for (int o0 = 0; o0 < H; o0 += OC)
        row_block<H, OC, G>(tile, Wt, bias, out, n, ii, jv, cols - jv, (b * H * n + i0 + ii) * n + j0 + jv, o0);
    prefetcher.step(per_row);
  }
}

// ---- Winograd F(2x2, 3x3): the same tile, 2 x 2 outputs from a 4 x 4 input patch ----
// Y = A^T [(G g G^T) . (B^T d B)] A: 16 multiplications per patch and channel pair
// instead of 36. The patches of W horizontally adjacent output pairs share a
// vector: lane t holds the patch whose columns start at 2t, read with an
// even/odd split of two vectors of the tile row. The transforms are exact in
// binary (0, +-1, +-1/2), and the result as accurate as the direct sum
// (docs/performance.md, section 9).

#if defined(__AVX512F__)
constexpr cmgm::vi EVEN = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
constexpr cmgm::vi ODD = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
constexpr cmgm::vi ZIP_LOW = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
constexpr cmgm::vi ZIP_HIGH = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
#else
constexpr cmgm::vi EVEN = {0, 2, 4, 6, 8, 10, 12, 14};
constexpr cmgm::vi ODD = {1, 3, 5, 7, 9, 11, 13, 15};
constexpr cmgm::vi ZIP_LOW = {0, 8, 1, 9, 2, 10, 3, 11};
constexpr cmgm::vi ZIP_HIGH = {4, 12, 5, 13, 6, 14, 7, 15};
#endif

// even[t] = p[2t], odd[t] = p[2t + 1] for t < W.
inline void deinterleave(const float* p, vf& even, vf& odd) {
  const vf low = load(p), high = load(p + W);
  even = __builtin_shuffle(low, high, EVEN);
  odd = __builtin_shuffle(low, high, ODD);
}

// The first `count` lanes of v (all of them when count >= W).
inline void store_first(float* dst, vf v, int64_t count) {
  if (count >= W) return cmgm::store(dst, v);
  for (int64_t k = 0; k < count; ++k) dst[k] = v[k];
}

// The filter in the Winograd domain, U[k][c][o] = (G g[o][c] G^T)[k] for k = 4 i + j, computed in double.
std::vector<float> winograd_filter(const float* weight, int64_t heads) {
  std::vector<float> U(16 * heads * heads);
  for (int64_t o = 0; o < heads; ++o)
    for (int64_t c = 0; c < heads; ++c) {
      const float* g = weight + (o * heads + c) * 9;
      double Gg[4][3];
      for (int q = 0; q < 3; ++q) {
        const double g0 = g[q], g1 = g[3 + q], g2 = g[6 + q];
        Gg[0][q] = g0, Gg[1][q] = (g0 + g1 + g2) / 2, Gg[2][q] = (g0 - g1 + g2) / 2, Gg[3][q] = g2;
      }
      for (int i = 0; i < 4; ++i) {
        const double u[4] = {Gg[i][0], (Gg[i][0] + Gg[i][1] + Gg[i][2]) / 2, (Gg[i][0] - Gg[i][1] + Gg[i][2]) / 2, Gg[i][2]};
        for (int j = 0; j < 4; ++j) U[((4 * i + j) * heads + c) * heads + o] = static_cast<float>(u[j]);
      }
    }
  return U;
}

// V = B^T d B for the W patches of channel plane `plane` whose top-left corners are (row, jv + 2t).
inline void transform_patches(const float* plane, int64_t row, int64_t jv, vf (&V)[16]) {
  vf d[4][4], t[4][4];
  for (int r = 0; r < 4; ++r) {
    const float* line = plane + (row + r) * P + jv;
    deinterleave(line, d[r][0], d[r][1]);
    deinterleave(line + 2, d[r][2], d[r][3]);
  }
  for (int q = 0; q < 4; ++q)
    t[0][q] = d[0][q] - d[2][q], t[1][q] = d[1][q] + d[2][q], t[2][q] = d[2][q] - d[1][q], t[3][q] = d[1][q] - d[3][q];
  for (int i = 0; i < 4; ++i) {
    V[4 * i + 0] = t[i][0] - t[i][2];
    V[4 * i + 1] = t[i][1] + t[i][2];
    V[4 * i + 2] = t[i][2] - t[i][1];
    V[4 * i + 3] = t[i][1] - t[i][3];
  }
}

// Output rows (ii, ii + 1) of channel o from its 16 products M (Y = A^T M A), + bias, ReLU,
// the two lanes of each patch interleaved into a row.
inline void store_patches(const vf (&M)[16], float beta, float* dst, int64_t n, int64_t rows_left, int64_t cols_left) {
  vf s[2][4];
  for (int q = 0; q < 4; ++q) s[0][q] = M[q] + M[4 + q] + M[8 + q], s[1][q] = M[4 + q] - M[8 + q] - M[12 + q];
  for (int r = 0; r < 2 && r < rows_left; ++r) {
    const vf left = cmgm::relu(s[r][0] + s[r][1] + s[r][2] + beta);
    const vf right = cmgm::relu(s[r][1] - s[r][2] - s[r][3] + beta);
    store_first(dst + r * n, __builtin_shuffle(left, right, ZIP_LOW), cols_left);
    if (cols_left > W) store_first(dst + r * n + W, __builtin_shuffle(left, right, ZIP_HIGH), cols_left - W);
  }
}

// All H output channels of one tile; `U` from winograd_filter. PAIRS row pairs at a time
// share each broadcast of U (two for up to 8 channels on AVX-512: V of both stays in L1).
template <int H, typename scalar_t>
void winograd_tile(const float* tile, const float* U, const float* bias, float* out, int64_t n, int64_t b, int64_t i0, int64_t j0,
                   RowPrefetcher<scalar_t>& prefetcher, size_t per_row) {
  constexpr int PAIRS = W == 16 && H <= 8 ? 2 : 1;  // 16 ymm registers hold one pair's 8 accumulators only
  constexpr int OB = H < 8 ? H : 8;  // output channels accumulated together: PAIRS x OB registers
  const int64_t rows = std::min(T, n - i0), cols = std::min(T, n - j0);
  vf V[PAIRS][H][16], M[PAIRS][OB][16];
  for (int64_t ii = 0; ii < rows; ii += 2 * PAIRS) {
    for (int64_t jv = 0; jv < cols; jv += 2 * W) {
      for (int g = 0; g < PAIRS; ++g)
        for (int c = 0; c < H; ++c) transform_patches(tile + c * P * P, std::min<int64_t>(ii + 2 * g, T - 2), jv, V[g][c]);
      for (int o0 = 0; o0 < H; o0 += OB) {
        for (int k = 0; k < 16; ++k) {  // M = U . V, summed over the input channels
          vf acc[PAIRS][OB] = {};
          for (int c = 0; c < H; ++c) {
            const float* u = U + (k * H + c) * H + o0;
            for (int g = 0; g < PAIRS; ++g) {
              const vf v = V[g][c][k];
              for (int o = 0; o < OB; ++o) acc[g][o] += u[o] * v;
            }
          }
          for (int g = 0; g < PAIRS; ++g)
            for (int o = 0; o < OB; ++o) M[g][o][k] = acc[g][o];
        }
        for (int g = 0; g < PAIRS; ++g) {
          const int64_t row = ii + 2 * g;
          if (row >= rows) break;
          for (int o = 0; o < OB; ++o)
            store_patches(M[g][o], bias[o0 + o], out + ((b * H + o0 + o) * n + i0 + row) * n + j0 + jv, n, rows - row, cols - jv);
        }
      }
    }
    prefetcher.step(2 * PAIRS * per_row);
  }
}

// The weight is laid out (c, di, dj, o): the h weights of one tap are contiguous.
// Tiles are taken in mirrored pairs (I, J), (J, I): A is read once for both,
// and the second tile of A + A^T is the first one transposed in cache.
template <int H, bool Winograd, typename scalar_t>
void fused_map_kernel(const scalar_t* A, const float* Wt, const float* bias, float* out, int64_t batch, int64_t n, int threads) {
  const int64_t tiles = (n + T - 1) / T;
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (I, J) with I <= J
  for (int64_t I = 0; I < tiles; ++I)
    for (int64_t J = I; J < tiles; ++J) pairs.emplace_back(I * T, J * T);
  const int64_t per_batch = static_cast<int64_t>(pairs.size());
  auto plane = [&](int64_t t) { return A + (t / per_batch) * H * n * n; };
  cmgm::parallel_for(batch * per_batch, 1, threads, [&](int64_t begin, int64_t end) {
    std::vector<float> tile(H * P * P), mirrored(H * P * P);
    RowPrefetcher<scalar_t> prefetcher;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / per_batch;
      const auto [i0, j0] = pairs[t % per_batch];
      for (int64_t c = 0; c < H; ++c)
        load_tile(plane(t) + c * n * n, tile.data() + c * P * P, n, i0, j0);
      if (t + 1 < end) {
        const auto [next_i0, next_j0] = pairs[(t + 1) % per_batch];
        prefetcher.plan(plane(t + 1), H, n, next_i0, next_j0);
      }
      const int64_t output_rows = (i0 == j0 ? 1 : 2) * std::min(T, n - i0);
      const size_t per_row = (prefetcher.size() + output_rows - 1) / output_rows;
      auto convolve = [&](const float* padded, int64_t r0, int64_t c0) {
        if constexpr (Winograd) {
          winograd_tile<H>(padded, Wt, bias, out, n, b, r0, c0, prefetcher, per_row);
        } else {
          convolve_tile<H>(padded, Wt, bias, out, n, b, r0, c0, prefetcher, per_row);
        }
      };
      convolve(tile.data(), i0, j0);
      if (i0 == j0) continue;
      for (int64_t c = 0; c < H; ++c) transpose_tile(tile.data() + c * P * P, mirrored.data() + c * P * P);
      convolve(mirrored.data(), j0, i0);
    }
  });
}

// The weight (o, c, di, dj) laid out (c, di, dj, o): the h weights of one tap are contiguous.
std::vector<float> taps_major(const float* weight, int64_t heads) {
  std::vector<float> taps(heads * heads * 9);
  for (int64_t o = 0; o < heads; ++o)
    for (int64_t tap = 0; tap < heads * 9; ++tap) taps[tap * heads + o] = weight[o * heads * 9 + tap];
  return taps;
}

template <bool Winograd, typename scalar_t>
void dispatch_heads(const scalar_t* A, const float* Wt, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
                    int threads) {
  switch (heads) {
    case 1: return fused_map_kernel<1, Winograd>(A, Wt, bias, out, batch, n, threads);
    case 2: return fused_map_kernel<2, Winograd>(A, Wt, bias, out, batch, n, threads);
    case 4: return fused_map_kernel<4, Winograd>(A, Wt, bias, out, batch, n, threads);
    case 8: return fused_map_kernel<8, Winograd>(A, Wt, bias, out, batch, n, threads);
    case 16: return fused_map_kernel<16, Winograd>(A, Wt, bias, out, batch, n, threads);
  }
}

template <typename scalar_t>
void fused_map_with(const scalar_t* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads,
                    int64_t n, bool winograd, int threads) {
  if (winograd) return dispatch_heads<true>(attn, winograd_filter(weight, heads).data(), bias, out, batch, heads, n, threads);
  dispatch_heads<false>(attn, taps_major(weight, heads).data(), bias, out, batch, heads, n, threads);
}

}  // namespace

namespace cmgm {

bool fused_map_supports(int64_t heads) { return heads == 1 || heads == 2 || heads == 4 || heads == 8 || heads == 16; }

void fused_map(const float* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
               bool winograd, int threads) {
  fused_map_with(attn, weight, bias, out, batch, heads, n, winograd, threads);
}

void fused_map(const bf16* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n,
               bool winograd, int threads) {
  fused_map_with(attn, weight, bias, out, batch, heads, n, winograd, threads);
}

}  // namespace cmgm
