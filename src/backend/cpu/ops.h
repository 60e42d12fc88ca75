// Element-wise and row-wise ops of the forward pass on CPU, f32. Each has a one-line definition in its comment,
// which is also its reference in tests/ops_test.cpp.
#pragma once
#include <cstdint>

#include "backend/backend.h"
#include "core/thread_pool.h"

namespace longctx::cpu {

// y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for each of n_rows rows of n values; x and y may alias.
void rmsnorm(const float* x, const float* w, float* y, int64_t n_rows, int64_t n, float eps);

using longctx::RopeOrder;
using longctx::GatedActivation;

// Rotary position embedding ("RoFormer: Enhanced Transformer with Rotary Position Embedding") in place.
// x: (n_tok, n_heads, head_dim); the first n_rot channels of each head rotate by angle pos * base^(-2i/n_rot).
void rope(float* x, const int32_t* positions, int64_t n_tok, int64_t n_heads, int64_t head_dim, int64_t n_rot,
          float base, RopeOrder order);

// rope's two halves are backend.h's host helpers: rope(x, &pos, 1, ...) is exactly rope_angles then rope_rotate.
using longctx::rope_angles;
using longctx::rope_rotate;

// gate = act(gate) * up, element-wise over n values.
void gated_activation(float* gate, const float* up, int64_t n, GatedActivation act);

// x += y over n values.
void add_in_place(float* x, const float* y, int64_t n);

}  // namespace longctx::cpu
