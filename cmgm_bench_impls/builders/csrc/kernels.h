// The fused kernels' entry points: plain C++ over raw buffers, no torch
// headers, so that their files compile in about a second each. operators.cpp
// checks the tensors, allocates the outputs and calls these with torch's
// thread count.
#pragma once

#include <cstdint>
#include <vector>

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

// The map kernel's tile side (pixels), and the zero columns before and after each row of the
// attention's padded k and v: the map kernel recomputes a tile's scores with its one-pixel halo
// in whole vectors, one padded tile row (kMapTile + 2, rounded up to vectors) from a column before it.
constexpr int64_t kMapTile = 32;
constexpr int64_t kEdge = (kMapTile + 2 + W - 1) / W * W;

// The attention's operands in the kernels' layout (float32, zero padded) and each row's softmax
// statistics: softmax(q k^T)[i][j] = exp(q_i . k_j - row_max[i]) * row_inverse[i], computed as the
// attention kernel computes it, so the map kernel can recompute the matrix tile by tile, equal bit
// for bit, instead of reading a stored one.
struct AttentionRows {
  int64_t batch, heads, n, d_pad, stride;   // stride: floats per row of qT, kT and vT, column j at kEdge + j
  std::vector<float> q;                     // (B, h, N, d_pad)
  std::vector<float> qT, kT, vT;            // (B, h, d_pad, stride)
  std::vector<float> row_max, row_inverse;  // (B, h, stride), row i at kEdge + i
};

// Writes out (B, N, h, d) float32 and, when attn is not null, the softmax matrix (B, h, N, N).
void softmax_attention(const AttentionInputs& inputs, float* attn, float* out, int threads, bool streaming = false);
void softmax_attention(const AttentionInputs& inputs, bf16* attn, float* out, int threads, bool streaming = false);
// Writes out (B, N, h, d) float32 and keeps in `rows` what the map needs to recompute the softmax matrix
// (every entry written; the vectors' memory of an earlier call is reused).
void softmax_attention_rows(const AttentionInputs& inputs, float* out, AttentionRows& rows, int threads);

// The map of fused_map over the softmax matrix that `rows` describe, recomputed tile by tile.
void fused_map(const AttentionRows& rows, const float* weight, const float* bias, float* out, int threads, bool streaming);

}  // namespace cmgm
