// Internal: the x86 SIMD mutual likelihood score kernel, written once over a
// vector type V and instantiated by tile_avx2.cpp and tile_avx512.cpp. Include
// it after tile_simd.h (same rules: after the target pragma, internal linkage).
//
// MLS is not a GEMM: every (pair, dimension) needs s1 + s2, a difference, a
// division and a log. The log is the cost, so it is not taken per dimension:
//
//   sum_d log t_d = ln 2 * sum_d e_d + log(prod_d m_d),   t_d = m_d * 2^e_d, m_d in [1, 2)
//
// The exponents are summed exactly as integers and the mantissas multiplied
// (renormalised every kRenormSteps steps so the product stays in range); one
// log per pair of the final product, 4 pairs at a time with a Cephes-style
// polynomial, finishes the sum. Per pair and dimension that is an add, a
// subtract, a divide, an FMA, a shift, an integer add, one or two bitwise
// operations and a multiply.
//
// Lanes run along d, so the gallery is read in place (no packing) and a query
// meets 4 gallery rows per pass. Every pair runs the same instruction sequence
// (a short group of rows repeats its first row rather than change it), so its
// score does not depend on where it falls in a tile, a thread or a batch.
#pragma once

#include <immintrin.h>

#include "tile.h"

namespace {

// Multiplying more mantissas than this could leave float32's exponent range.
constexpr std::size_t kRenormSteps = 64;

// Four pairs' sums of (mu1 - mu2)^2 / t (sq), of the unbiased exponents of t
// (expo, exact integers) and the product of the mantissas of t (prod, in
// [1, 2^16)) -> their scores. log(prod) by Cephes' logf polynomial (about 1e-7
// relative); the sum is finished in double so that neither the large constant
// nor e * ln 2 adds a float32 rounding.
inline __m128 mls_finish4(__m128 sq, __m128 expo, __m128 prod, __m256d minus_constant) {
  const __m128i bits = _mm_castps_si128(prod);
  __m128 e = _mm_add_ps(expo, _mm_cvtepi32_ps(_mm_sub_epi32(_mm_srli_epi32(bits, 23), _mm_set1_epi32(127))));
  __m128 m = _mm_castsi128_ps(_mm_or_si128(_mm_and_si128(bits, _mm_set1_epi32(0x007FFFFF)),
                                           _mm_set1_epi32(0x3F800000)));  // [1, 2)
  // Into [sqrt(1/2), sqrt(2)) so the polynomial's argument is small.
  const __m128 big = _mm_cmpgt_ps(m, _mm_set1_ps(1.41421356237f));
  m = _mm_blendv_ps(m, _mm_mul_ps(m, _mm_set1_ps(0.5f)), big);
  e = _mm_add_ps(e, _mm_and_ps(big, _mm_set1_ps(1.f)));
  const __m128 z = _mm_sub_ps(m, _mm_set1_ps(1.f)), z2 = _mm_mul_ps(z, z);
  static constexpr float kPoly[] = {7.0376836292e-2f,  -1.1514610310e-1f, 1.1676998740e-1f,
                                    -1.2420140846e-1f, 1.4249322787e-1f,  -1.6668057665e-1f,
                                    2.0000714765e-1f,  -2.4999993993e-1f, 3.3333331174e-1f};
  __m128 y = _mm_set1_ps(kPoly[0]);
  for (std::size_t c = 1; c < sizeof kPoly / sizeof kPoly[0]; ++c) y = _mm_fmadd_ps(y, z, _mm_set1_ps(kPoly[c]));
  y = _mm_mul_ps(_mm_mul_ps(y, z), z2);
  y = _mm_fmadd_ps(z2, _mm_set1_ps(-0.5f), y);
  const __m128 log_m = _mm_add_ps(z, y);
  // -1/2 (sq + e ln 2 + log m) - (D/2) log(2 pi), in double.
  __m256d total = _mm256_add_pd(_mm256_cvtps_pd(sq), _mm256_cvtps_pd(log_m));
  total = _mm256_fmadd_pd(_mm256_cvtps_pd(e), _mm256_set1_pd(0.69314718055994530942), total);
  return _mm256_cvtpd_ps(_mm256_fmadd_pd(total, _mm256_set1_pd(-0.5), minus_constant));
}

// Products back into [1, 2), their exponents into the (biased) exponent sums.
template <class V>
inline void mls_renormalise(typename V::reg prod[4], typename V::ireg expo[4], int& steps) {
  for (int r = 0; r < 4; ++r) {
    expo[r] = V::iadd(expo[r], V::exponent_bits(prod[r]));
    prod[r] = V::mantissa(prod[r]);
  }
  ++steps;
}

// One query against 4 gallery rows: the three per-pair reductions of mls_finish4.
template <class V>
void mls_block4(const float* qm, const float* qs, const float* const gm[4], const float* const gs[4],
                std::size_t dim, __m128& sq4, __m128& expo4, __m128& prod4) {
  using reg = typename V::reg;
  using ireg = typename V::ireg;
  constexpr std::size_t W = V::width;
  reg sq[4], prod[4];
  ireg expo[4];  // biased exponents; `steps` of them per lane
  for (int r = 0; r < 4; ++r) {
    sq[r] = V::zero();
    prod[r] = V::set1(1.f);
    expo[r] = V::izero();
  }
  int steps = 0;
  const std::size_t full = dim - dim % W;
  for (std::size_t d0 = 0; d0 < full; d0 += kRenormSteps * W) {
    const std::size_t d1 = full - d0 < kRenormSteps * W ? full : d0 + kRenormSteps * W;
    for (std::size_t d = d0; d < d1; d += W) {
      const reg a_m = V::load(qm + d), a_s = V::load(qs + d);
      for (int r = 0; r < 4; ++r) {
        const reg t = V::add(a_s, V::load(gs[r] + d));
        const reg diff = V::sub(a_m, V::load(gm[r] + d));
        sq[r] = V::fma(diff, V::div(diff, t), sq[r]);
        expo[r] = V::iadd(expo[r], V::exponent_bits(t));
        prod[r] = V::mul(prod[r], V::mantissa(t));
      }
    }
    steps += int(d1 - d0) / int(W);
    mls_renormalise<V>(prod, expo, steps);
  }
  if (full < dim) {  // the tail of d: lanes past the end see mu = 0, t = 1
    const typename V::mask valid = V::first_lanes(dim - full);
    const reg a_m = V::load_lanes(qm + full, valid), a_s = V::load_lanes(qs + full, valid);
    for (int r = 0; r < 4; ++r) {
      const reg t = V::select(valid, V::add(a_s, V::load_lanes(gs[r] + full, valid)), V::set1(1.f));
      const reg diff = V::sub(a_m, V::load_lanes(gm[r] + full, valid));
      sq[r] = V::fma(diff, V::div(diff, t), sq[r]);
      expo[r] = V::iadd(expo[r], V::exponent_bits(t));
      prod[r] = V::mul(prod[r], V::mantissa(t));
    }
    ++steps;
    mls_renormalise<V>(prod, expo, steps);
  }
  reg e[4];
  for (int r = 0; r < 4; ++r) e[r] = V::to_float(V::isub(expo[r], V::iset1(127 * steps)));
  sq4 = V::hsum4(sq);
  expo4 = V::hsum4(e);
  prod4 = V::hmul4(prod);
}

template <class V>
void mls_rows(const float* q_mu, const float* q_s, const float* g_mu, const float* g_s, std::size_t rows,
              std::size_t dim, float* out) {
  const __m256d minus_constant = _mm256_set1_pd(-facesdk::detail::mls_constant(dim));
  for (std::size_t j0 = 0; j0 < rows; j0 += 4) {
    const float* m[4];
    const float* s[4];
    for (std::size_t k = 0; k < 4; ++k) {
      const std::size_t j = j0 + k < rows ? j0 + k : j0;
      m[k] = g_mu + j * dim;
      s[k] = g_s + j * dim;
    }
    __m128 sq, expo, prod;
    mls_block4<V>(q_mu, q_s, m, s, dim, sq, expo, prod);
    const __m128 score = mls_finish4(sq, expo, prod, minus_constant);
    if (j0 + 4 <= rows) {
      _mm_storeu_ps(out + j0, score);
    } else {
      alignas(16) float last[4];
      _mm_store_ps(last, score);
      for (std::size_t k = 0; j0 + k < rows; ++k) out[j0 + k] = last[k];
    }
  }
}

}  // namespace
