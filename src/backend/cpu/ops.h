// Element-wise and row-wise ops of the forward pass on CPU, f32. Each has a one-line definition in its comment,
// which is also its reference in tests/ops_test.cpp.
#pragma once
#include <cstdint>

#include "core/thread_pool.h"

namespace longctx::cpu {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for each of n_rows rows of n values; x and y may alias.
void rmsnorm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps);

enum class RopeOrder {
  Adjacent,  // rotate pairs (x[2i], x[2i+1]) — llama GGUFs (the converter permutes Q and K to this order)
  Halves,    // rotate pairs (x[i], x[i + n_rot/2]) — "NeoX" order, gemma
};

// Rotary position embedding ("RoFormer: Enhanced Transformer with Rotary Position Embedding") in place.
// x: (n_tok, n_heads, head_dim); the first n_rot channels of each head rotate by angle pos * base^(-2i/n_rot).
void rope(float* x, const int32_t* positions, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
          float base, RopeOrder order);

// rope's two halves, for callers that turn many vectors by one angle set: the cos and sin (n_rot / 2) of position
// pos, then the rotation of x: (n_heads, head_dim) by them. rope(x, &pos, 1, ...) is exactly the two in a row.
void rope_angles(int32_t pos, int64_t n_rot, float base, float* cos_t, float* sin_t);
void rope_rotate(float* x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float* cos_t, const float* sin_t,
                 RopeOrder order);

enum class GatedActivation {
  SiLU,      // SwiGLU: silu(gate) * up
  GeluTanh,  // GeGLU with the tanh approximation of GELU
};

// gate = act(gate) * up, element-wise over n values.
void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act);

// x += y over n values.
void add_in_place(float* x, const float* y, int64_t n);

}  // namespace longctx::cpu
