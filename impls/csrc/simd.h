// 16-float SIMD vectors through GCC vector extensions (lowered to AVX-512,
// AVX2 or SSE, whatever -march=native offers) and the few operations the
// fused kernels need: loads from float32 or bfloat16, ReLU, exp, sums and a
// 16 x 16 transpose in registers.
#pragma once

#include <c10/util/BFloat16.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cmgm {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));

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

inline v16 splat(float x) { return v16{} + x; }

inline v16 load16(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }

// bfloat16 is the upper half of a float32: widen and shift.
inline v16 load16(const c10::BFloat16* p) {
  v16h h;
  std::memcpy(&h, p, sizeof h);
  v16u wide = __builtin_convertvector(h, v16u) << 16;
  v16 v;
  std::memcpy(&v, &wide, sizeof v);
  return v;
}

inline void store16(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// Round to nearest even, as c10::BFloat16's constructor does.
inline void store16(c10::BFloat16* p, v16 v) {
  v16u bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  v16h h = __builtin_convertvector(bits, v16h);
  std::memcpy(p, &h, sizeof h);
}

inline v16 max16(v16 a, v16 b) { return a > b ? a : b; }
inline v16 relu16(v16 a) { return max16(a, v16{}); }

inline float hsum(v16 v) {
  float s = 0.f;
  for (int k = 0; k < 16; ++k) s += v[k];
  return s;
}

inline float hmax(v16 v) {
  float m = v[0];
  for (int k = 1; k < 16; ++k) m = v[k] > m ? v[k] : m;
  return m;
}

// exp(x) for x <= 0 (softmax after subtracting the row maximum), relative
// error about 2e-7: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by Cephes'
// expf polynomial, times 2^n. Below -87 it returns ~1e-38 instead of
// denormals or zero, far under float32's resolution of a softmax row.
inline v16 exp16(v16 x) {
  x = max16(x, splat(-87.0f));
#if defined(__AVX512F__)
  const v16 n = reinterpret_cast<v16>(_mm512_roundscale_ps(reinterpret_cast<__m512>(x * 1.44269504088896341f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  const v16 n = __builtin_convertvector(__builtin_convertvector(x * 1.44269504088896341f - 0.5f, v16i), v16);
#endif
  v16 r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  v16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
#if defined(__AVX512F__)
  return reinterpret_cast<v16>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(n)));
#else
  v16i scale = (__builtin_convertvector(n, v16i) + 127) << 23;
  v16 two_n;
  std::memcpy(&two_n, &scale, sizeof two_n);
  return p * two_n;
#endif
}

// Transpose 16 rows of 16 floats in place: four butterfly stages, each
// swapping one bit of the row index with the same bit of the lane index.
inline void transpose16(v16 (&rows)[16]) {
  static constexpr v16i lo[4] = {
      {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
      {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
      {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
      {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}};
  static constexpr v16i hi[4] = {
      {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31},
      {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31},
      {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31},
      {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}};
  for (int stage = 0; stage < 4; ++stage) {
    const int step = 1 << stage;
    for (int r = 0; r < 16; ++r) {
      if (r & step) continue;
      const v16 a = rows[r], b = rows[r + step];
      rows[r] = __builtin_shuffle(a, b, lo[stage]);
      rows[r + step] = __builtin_shuffle(a, b, hi[stage]);
    }
  }
}

}  // namespace cmgm
