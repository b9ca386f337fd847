// AVX-512F micro-kernels: 12 query rows x 32 gallery rows (24 accumulators),
// and the MLS kernel of mls_simd.h on 16-float vectors.
#include "tile.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx2,fma,f16c")
#include "tile_simd.h"
#include "mls_simd.h"

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
  static reg from_f16(const std::uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static reg from_i8(const std::int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static reg from_code(const std::uint16_t* p) { return from_f16(p); }
  static reg from_code(const std::int8_t* p) { return from_i8(p); }
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
  // For mls_simd.h.
  using ireg = __m512i;
  using mask = __mmask16;
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static ireg izero() { return _mm512_setzero_si512(); }
  static ireg iset1(int x) { return _mm512_set1_epi32(x); }
  static ireg iadd(ireg a, ireg b) { return _mm512_add_epi32(a, b); }
  static ireg isub(ireg a, ireg b) { return _mm512_sub_epi32(a, b); }
  static reg to_float(ireg a) { return _mm512_cvtepi32_ps(a); }
  // x > 0 normal: its biased exponent, and its mantissa as a float in [1, 2).
  static ireg exponent_bits(reg x) { return _mm512_srli_epi32(_mm512_castps_si512(x), 23); }
  static reg mantissa(reg x) {  // (x & 0x007FFFFF) | bits(1.0f) in one ternary-logic op
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(x), _mm512_set1_epi32(0x007FFFFF),
                                                         _mm512_set1_epi32(0x3F800000), 0xEA));
  }
  static mask first_lanes(std::size_t n) { return mask((1u << n) - 1u); }
  static reg load_lanes(const float* p, mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static reg select(mask m, reg yes, reg no) { return _mm512_mask_blend_ps(m, no, yes); }
  static __m256 hmul(__m256 a, __m256 b) {  // _mm256_hadd_ps's lane order, multiplying
    return _mm256_mul_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
  }
  static __m128 hmul4(const reg v[4]) {  // halves, then the AVX2 tree (as hsum4)
    __m256 h[4];
    for (int r = 0; r < 4; ++r)
      h[r] = _mm256_mul_ps(_mm512_castps512_ps256(v[r]),
                           _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v[r]), 1)));
    const __m256 t = hmul(hmul(h[0], h[1]), hmul(h[2], h[3]));
    return _mm_mul_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
};
constexpr facesdk::detail::TileKernels kAvx512 = make_kernels<Avx512, 12>("avx512", mls_rows<Avx512>);
}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::avx512_kernels() { return &kAvx512; }
#else
const facesdk::detail::TileKernels* facesdk::detail::avx512_kernels() { return nullptr; }
#endif
