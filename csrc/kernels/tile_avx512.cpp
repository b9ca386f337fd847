// AVX-512F micro-kernels: 12 query rows x 32 gallery rows (24 accumulators).
#include "tile.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx2,fma")
#include "tile_simd.h"

namespace {
struct Avx512 {
  using reg = __m512;
  static constexpr std::size_t width = 16;
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static reg set1(float x) { return _mm512_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static __m128 hsum4(const reg v[4]) {  // halves, then the AVX2 tree
    __m256 h[4];
    for (int r = 0; r < 4; ++r)
      h[r] = _mm256_add_ps(_mm512_castps512_ps256(v[r]),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[r]), 1)));
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  static std::uint32_t below(reg v, reg lim, bool inclusive) {
    return inclusive ? _mm512_cmp_ps_mask(v, lim, _CMP_LE_OQ) : _mm512_cmp_ps_mask(v, lim, _CMP_LT_OQ);
  }
};
constexpr facesdk::detail::TileKernels kAvx512 = make_kernels<Avx512, 12>("avx512");
}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::avx512_kernels() { return &kAvx512; }
#else
const facesdk::detail::TileKernels* facesdk::detail::avx512_kernels() { return nullptr; }
#endif
