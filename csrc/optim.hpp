// Optimizer steps of the on-board trainer (orbitfl.agent.optim): one pass over a flat float32
// parameter slice, in place. NumPy needs a dozen ufunc calls for the same update, ~10 us of call
// overhead a step whatever the model's size.
#pragma once

#include <cstddef>

namespace orbitfl {

// ONNX Runtime training's AdamW (adam_mode 1): m = b1 m + c1 g; v = b2 v + c2 g^2 (c = 1 - beta,
// rounded by the caller); p -= m / (sqrt(v) + eps) * lr_c; then p *= decay (1 - lr * weight_decay,
// 1 for none). lr_c is the caller's bias-corrected learning rate. The same operations in the same
// order as orbitfl.agent.optim's NumPy reference, so the two agree bit for bit. Every element is computed with the same
// IEEE operations in the same order (no FMA contraction) on every SIMD path, so results are
// bit-identical whichever path the CPU gets.
void adamw_step(float* p, const float* g, float* m, float* v, std::size_t n, float b1, float b2, float c1,
                float c2, float lr_c, float eps, float decay);

// Plain SGD p -= lr g, tracking sq = beta sq + (1 - beta) g^2 (the substitute for Adam's v).
void sgd_step(float* p, const float* g, float* sq, std::size_t n, float lr, float beta);

// The SIMD path adamw_step takes on this CPU: "avx512", "avx2" or "generic".
const char* optim_simd();

}  // namespace orbitfl
