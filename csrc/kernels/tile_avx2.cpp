// AVX2 + FMA (+ F16C for fp16 galleries) micro-kernels: 6 query rows x 16 gallery rows (12 accumulators),
// and the MLS kernel of mls_simd.h on 8-float vectors.
#include "tile.h"

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma,f16c")
#include "tile_simd.h"
#include "mls_simd.h"

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
  static reg from_f16(const std::uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static reg from_i8(const std::int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static reg from_code(const std::uint16_t* p) { return from_f16(p); }
  static reg from_code(const std::int8_t* p) { return from_i8(p); }
  static __m128 hsum4(const reg v[4]) {  // lane sums of 4 vectors: pairs, quads, halves
    const reg t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  static std::uint32_t below(reg v, reg lim, bool inclusive) {
    const reg m = inclusive ? _mm256_cmp_ps(v, lim, _CMP_LE_OQ) : _mm256_cmp_ps(v, lim, _CMP_LT_OQ);
    return static_cast<std::uint32_t>(_mm256_movemask_ps(m));
  }
  // For mls_simd.h.
  using ireg = __m256i;
  using mask = __m256i;
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static ireg izero() { return _mm256_setzero_si256(); }
  static ireg iset1(int x) { return _mm256_set1_epi32(x); }
  static ireg iadd(ireg a, ireg b) { return _mm256_add_epi32(a, b); }
  static ireg isub(ireg a, ireg b) { return _mm256_sub_epi32(a, b); }
  static reg to_float(ireg a) { return _mm256_cvtepi32_ps(a); }
  // x > 0 normal: its biased exponent, and its mantissa as a float in [1, 2).
  static ireg exponent_bits(reg x) { return _mm256_srli_epi32(_mm256_castps_si256(x), 23); }
  static reg mantissa(reg x) {
    return _mm256_or_ps(_mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x007FFFFF))), _mm256_set1_ps(1.f));
  }
  static mask first_lanes(std::size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static reg load_lanes(const float* p, mask m) { return _mm256_maskload_ps(p, m); }
  static reg select(mask m, reg yes, reg no) { return _mm256_blendv_ps(no, yes, _mm256_castsi256_ps(m)); }
  static reg hmul(reg a, reg b) {  // _mm256_hadd_ps's lane order, multiplying
    return _mm256_mul_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
  }
  static __m128 hmul4(const reg v[4]) {  // lane products of 4 vectors, hsum4's tree
    const reg t = hmul(hmul(v[0], v[1]), hmul(v[2], v[3]));
    return _mm_mul_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
};
constexpr facesdk::detail::TileKernels kAvx2 = make_kernels<Avx2, 6>("avx2", mls_rows<Avx2>);
}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::avx2_kernels() { return &kAvx2; }
#else
const facesdk::detail::TileKernels* facesdk::detail::avx2_kernels() { return nullptr; }
#endif
