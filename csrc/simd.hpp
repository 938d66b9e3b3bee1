// Which vector instruction set the hot loops use. One place decides, so every kernel and the
// module's `simd` attribute agree. All paths must give the scalar path's bits exactly.
#pragma once

#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(ORBITFL_NO_SIMD)
#define ORBITFL_NEON 1
#include <arm_neon.h>
#elif (defined(__SSE2__) || defined(_M_X64)) && !defined(ORBITFL_NO_SIMD)
#define ORBITFL_SSE2 1
#include <emmintrin.h>
#endif

namespace orbitfl {

inline const char* simd_name() {
#if defined(ORBITFL_NEON)
  return "neon";
#elif defined(ORBITFL_SSE2)
  return "sse2";
#else
  return "scalar";
#endif
}

}  // namespace orbitfl
