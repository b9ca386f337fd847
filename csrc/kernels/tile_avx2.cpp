// AVX2 + FMA micro-kernels: 6 query rows x 16 gallery rows (12 accumulators).
#include "tile.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include "tile_simd.h"

namespace {
struct Avx2 {
  using reg = __m256;
  static constexpr std::size_t width = 8;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static reg set1(float x) { return _mm256_set1_ps(x); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static __m128 hsum4(const reg v[4]) {  // lane sums of 4 vectors: pairs, quads, halves
    const reg t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  static std::uint32_t below(reg v, reg lim, bool inclusive) {
    const reg m = inclusive ? _mm256_cmp_ps(v, lim, _CMP_LE_OQ) : _mm256_cmp_ps(v, lim, _CMP_LT_OQ);
    return static_cast<std::uint32_t>(_mm256_movemask_ps(m));
  }
};
constexpr facesdk::detail::TileKernels kAvx2 = make_kernels<Avx2, 6>("avx2");
}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::avx2_kernels() { return &kAvx2; }
#else
const facesdk::detail::TileKernels* facesdk::detail::avx2_kernels() { return nullptr; }
#endif
