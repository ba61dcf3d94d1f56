// SIMD vectors of the target's native width through GCC vector extensions,
// and the few operations the fused kernels need: loads from float32 or
// bfloat16, ReLU, exp, sums and a W x W transpose in registers.
//
// W is 16 floats (one zmm register) on an AVX-512 target and 8 floats (one
// ymm register) otherwise: the kernels size their register blocks from W, so
// the AVX2 build keeps its accumulators within 16 ymm registers instead of
// splitting 64-byte vectors over pairs of them and spilling.
#pragma once

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cmgm {

#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
typedef uint16_t vh __attribute__((vector_size(2 * W)));

// Ask Linux for 2 MiB pages over the whole pages of a fresh buffer, before it
// is first written. Buffers of 32 MiB and more (glibc's largest mmap
// threshold) come straight from mmap on every call, and faulting them in
// 4 KiB at a time cost more than writing them (about 0.5 ms per MB on the
// development VM). Smaller ones come from the heap, already faulted in, where
// the hint would buy nothing and would stay on the heap's pages for every
// later allocation of the process. A hint: ignored where transparent huge
// pages are off, and a no-op off Linux.
inline void prefer_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (bytes < (size_t{32} << 20)) return;
  constexpr uintptr_t huge = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data, (void)bytes;
#endif
}

inline vf splat(float x) { return vf{} + x; }

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }

// bfloat16 storage: the upper half of a float32's bits (the layout of c10::BFloat16).
struct bf16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  const uint32_t wide = uint32_t{x.bits} << 16;
  float f;
  std::memcpy(&f, &wide, sizeof f);
  return f;
}

// bfloat16 is the upper half of a float32: widen and shift.
inline vf load(const bf16* p) {
  vh h;
  std::memcpy(&h, p, sizeof h);
  vu wide = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// A store that bypasses the cache (non-temporal: the line is not read first) where p is aligned to a
// whole vector, a plain store otherwise. Streaming stores are weakly ordered: the thread that made
// them calls streaming_stores_done() before any other thread may read what they wrote.
constexpr bool kStreamingStores =
#if defined(__AVX512F__) || defined(__AVX2__)
    true;
#else
    false;
#endif

inline void store_streaming(float* p, vf v) {
#if defined(__AVX512F__)
  if (reinterpret_cast<uintptr_t>(p) % sizeof v == 0) return _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  if (reinterpret_cast<uintptr_t>(p) % sizeof v == 0) return _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#endif
  store(p, v);
}

inline void streaming_stores_done() {
#if defined(__AVX512F__) || defined(__AVX2__)
  _mm_sfence();
#endif
}

// The bfloat16 bits of float32 bits (one value or a vector of them), rounded to nearest
// even as c10::BFloat16's constructor rounds (finite values).
template <typename Bits>
inline Bits bfloat16_bits(Bits bits) {
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

inline void store(bf16* p, vf v) {
  vu bits;
  std::memcpy(&bits, &v, sizeof bits);
  vh h = __builtin_convertvector(bfloat16_bits(bits), vh);
  std::memcpy(p, &h, sizeof h);
}

inline void store_one(float* p, float x) { *p = x; }
inline void store_one(bf16* p, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  p->bits = static_cast<uint16_t>(bfloat16_bits(bits));
}

inline vf maxv(vf a, vf b) { return a > b ? a : b; }
inline vf relu(vf a) { return maxv(a, vf{}); }

// Horizontal sum and maximum as trees of halves (a lane-by-lane loop is a chain of W dependent
// additions: with a dozen of them per softmax row it cost as much as the row's vector work at 11x11).
inline float hsum(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps(reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  const __m256 x = reinterpret_cast<__m256>(v);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
#else
  float s = 0.f;
  for (int k = 0; k < W; ++k) s += v[k];
  return s;
#endif
}

inline float hmax(vf v) {
#if defined(__AVX512F__)
  return _mm512_reduce_max_ps(reinterpret_cast<__m512>(v));
#elif defined(__AVX2__)
  const __m256 x = reinterpret_cast<__m256>(v);
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
#else
  float m = v[0];
  for (int k = 1; k < W; ++k) m = v[k] > m ? v[k] : m;
  return m;
#endif
}

// exp(x) for x <= 0 (softmax after subtracting the row maximum), relative
// error about 2e-7: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes'
// expf polynomial, times 2^n. Below -87 it returns ~1e-38 instead of
// denormals or zero, far under float32's resolution of a softmax row.
inline vf expv(vf x) {
  x = maxv(x, splat(-87.0f));
#if defined(__AVX512F__)
  const vf n = reinterpret_cast<vf>(_mm512_roundscale_ps(reinterpret_cast<__m512>(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__AVX2__)
  const vf n = reinterpret_cast<vf>(_mm256_round_ps(reinterpret_cast<__m256>(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  const vf n = __builtin_convertvector(__builtin_convertvector(x * 1.44269504088896341f - 0.5f, vi), vf);
#endif
  vf r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
#if defined(__AVX512F__)
  return reinterpret_cast<vf>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  vi scale = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &scale, sizeof two_n);
  return p * two_n;
#endif
}

// Transpose W rows of W floats in place.
inline void transpose(vf (&rows)[W]) {
#if defined(__AVX512F__)
  // Four butterfly stages, each swapping one bit of the row index with the same bit of the lane index.
  static constexpr vi lo[4] = {
      {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
      {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}};
  static constexpr vi hi[4] = {
      {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
      {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}};
  for (int stage = 0; stage < 4; ++stage) {
    const int step = 1 << stage;
    for (int r = 0; r < 16; ++r) {
      if (r & step) continue;
      const vf a = rows[r], b = rows[r + step];
      rows[r] = __builtin_shuffle(a, b, lo[stage]);
      rows[r + step] = __builtin_shuffle(a, b, hi[stage]);
    }
  }
#elif defined(__AVX2__)
  // The textbook 8 x 8 transpose: unpack pairs, shuffle quads, exchange 128-bit halves.
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = reinterpret_cast<__m256>(rows[i]);
  for (int i = 0; i < 8; i += 2) t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]), t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 4; ++i) {
    rows[i] = reinterpret_cast<vf>(_mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    rows[i + 4] = reinterpret_cast<vf>(_mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
#else
  for (int i = 0; i < W; ++i)
    for (int j = i + 1; j < W; ++j) {
      const float swap = rows[i][j];
      rows[i][j] = rows[j][i];
      rows[j][i] = swap;
    }
#endif
}

}  // namespace cmgm
