#include "optim.hpp"

#include <cmath>

namespace orbitfl {

namespace {

#define ORBITFL_ADAMW_BODY                                         \
  for (std::size_t i = 0; i < n; ++i) {                            \
    const float gi = g[i];                                         \
    const float mi = b1 * m[i] + c1 * gi;                          \
    const float vi = b2 * v[i] + c2 * (gi * gi);                   \
    m[i] = mi;                                                     \
    v[i] = vi;                                                     \
    const float pi = p[i] - mi / (std::sqrt(vi) + eps) * lr_c;     \
    p[i] = pi * decay;                                             \
  }

using AdamFn = void (*)(float* __restrict, const float* __restrict, float* __restrict, float* __restrict,
                        std::size_t, float, float, float, float, float, float, float);

void adamw_generic(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                   std::size_t n, float b1, float b2, float c1, float c2, float lr_c, float eps, float decay) {
  ORBITFL_ADAMW_BODY
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) void adamw_avx2(float* __restrict p, const float* __restrict g,
                                                float* __restrict m, float* __restrict v, std::size_t n,
                                                float b1, float b2, float c1, float c2, float lr_c, float eps,
                                                float decay) {
  ORBITFL_ADAMW_BODY
}

__attribute__((target("avx512f"))) void adamw_avx512(float* __restrict p, const float* __restrict g,
                                                     float* __restrict m, float* __restrict v, std::size_t n,
                                                     float b1, float b2, float c1, float c2, float lr_c, float eps,
                                                float decay) {
  ORBITFL_ADAMW_BODY
}
#endif

struct Choice {
  AdamFn fn;
  const char* name;
};

Choice choose() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {adamw_avx512, "avx512"};
  if (__builtin_cpu_supports("avx2")) return {adamw_avx2, "avx2"};
#endif
  return {adamw_generic, "generic"};
}

const Choice& chosen() {
  static const Choice c = choose();
  return c;
}

}  // namespace

void adamw_step(float* p, const float* g, float* m, float* v, std::size_t n, float b1, float b2, float c1,
                float c2, float lr_c, float eps, float decay) {
  chosen().fn(p, g, m, v, n, b1, b2, c1, c2, lr_c, eps, decay);
}

void sgd_step(float* __restrict p, const float* __restrict g, float* __restrict sq, std::size_t n, float lr,
              float beta) {
  const float c = 1.0f - beta;
  for (std::size_t i = 0; i < n; ++i) {
    const float gi = g[i];
    sq[i] = beta * sq[i] + c * (gi * gi);
    p[i] -= lr * gi;
  }
}

const char* optim_simd() { return chosen().name; }

}  // namespace orbitfl
