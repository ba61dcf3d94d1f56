// The fused kernels' entry points: plain C++ over raw buffers, no torch
// headers, so that their files compile in about a second each. operators.cpp
// checks the tensors, allocates the outputs and calls these with torch's
// thread count.
#pragma once

#include <cstdint>

#include "simd.h"

namespace cmgm {

// out (B, h, N, N) float32 = ReLU(conv3x3(A + A^T, weight) + bias) for A (B, h, N, N), contiguous;
// weight (h, h, 3, 3) and bias (h), float32 and contiguous, with the BatchNorm folded in. `streaming`:
// out is written with streaming stores (kStreamingStores: where the target has them).
bool fused_map_supports(int64_t heads);
void fused_map(const float* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n, int threads,
               bool streaming);
void fused_map(const bf16* attn, const float* weight, const float* bias, float* out, int64_t batch, int64_t heads, int64_t n, int threads,
               bool streaming);

// q, k, v: (B, h, N, d), float32 or bfloat16, with any element strides; q already scaled.
struct AttentionInputs {
  const void* q;
  const void* k;
  const void* v;
  bool bfloat16;
  int64_t strides[3][4];  // [q, k, v][B, h, N, d]
  int64_t batch, heads, n, d;
};

// Writes out (B, N, h, d) float32 and, when attn is not null, the softmax matrix (B, h, N, N).
void softmax_attention(const AttentionInputs& inputs, float* attn, float* out, int threads, bool streaming = false);
void softmax_attention(const AttentionInputs& inputs, bf16* attn, float* out, int threads, bool streaming = false);

}  // namespace cmgm
