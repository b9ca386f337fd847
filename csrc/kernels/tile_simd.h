// Internal: the x86 SIMD micro-kernels, written once over a vector type V and
// instantiated by tile_avx2.cpp (V = 8 floats) and tile_avx512.cpp (16 floats).
//
// Include this only after `#pragma GCC target(...)` and after every standard
// header: everything here has internal linkage, so code compiled for one
// instruction set is never merged by the linker into another's.
#pragma once

#include <immintrin.h>

#include "tile.h"

namespace {

using std::size_t;

constexpr int kDirectRows = 2;
using std::uint32_t;

// In-register transpose of an 8x8 float block (rows become columns).
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
  r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
  r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
  r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
  r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
  r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
  r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
  r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Squared norm of one row as one fused multiply-add chain over d: the same
// chain a lane of the packed norms and of the micro-kernel's dot products runs.
inline float norm_chain(const float* x, size_t dim) {
  float s = 0.f;
  for (size_t d = 0; d < dim; ++d) s = __builtin_fmaf(x[d], x[d], s);
  return s;
}

void row_norms(const float* x, size_t rows, size_t dim, float* out) {
  for (size_t r = 0; r < rows; ++r) out[r] = norm_chain(x + r * dim, dim);
}

// Packs up to NR rows transposed, eight rows at a time through 8x8 transposes.
template <size_t NR>
void pack_panel(const float* g, size_t rows, size_t dim, float* panel, float* norms) {
  for (size_t r0 = 0; r0 < NR; r0 += 8) {
    float* dst = panel + r0;
    const float* src = g + r0 * dim;
    if (r0 + 8 <= rows) {
      __m256 acc = _mm256_setzero_ps();
      size_t d = 0;
      for (; d + 8 <= dim; d += 8) {
        __m256 v[8];
        for (size_t t = 0; t < 8; ++t) v[t] = _mm256_loadu_ps(src + t * dim + d);
        transpose8(v);
        for (size_t t = 0; t < 8; ++t) {
          _mm256_storeu_ps(dst + (d + t) * NR, v[t]);
          acc = _mm256_fmadd_ps(v[t], v[t], acc);
        }
      }
      for (; d < dim; ++d) {
        const __m256 v = _mm256_setr_ps(src[d], src[dim + d], src[2 * dim + d], src[3 * dim + d],
                                        src[4 * dim + d], src[5 * dim + d], src[6 * dim + d],
                                        src[7 * dim + d]);
        _mm256_storeu_ps(dst + d * NR, v);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      _mm256_storeu_ps(norms + r0, acc);
    } else {  // the last, partial group: zero-fill the rows past the end
      for (size_t j = 0; j < 8; ++j) {
        const bool valid = r0 + j < rows;
        for (size_t d = 0; d < dim; ++d) dst[d * NR + j] = valid ? src[j * dim + d] : 0.f;
        norms[r0 + j] = valid ? norm_chain(src + j * dim, dim) : 0.f;
      }
    }
  }
}

// A query or two straight against raw gallery rows, for the memory-bound case
// where transposing the gallery would cost more than the arithmetic. Each dot
// product runs V::width partial chains along d, summed four rows at a time by
// V::hsum4's fixed tree, then any tail of d: not the packed path's rounding,
// but the same for every row, every split of the gallery and any number of
// threads (a short group repeats its first row rather than change the tree).
//
// row_block: squared norms of 4 rows and their dots with MQ queries, in one
// pass over the rows, four chains in flight.
template <class V, int MQ>
void row_block(const float* q, size_t dim, const float* const rows[4], float norms[4],
               float (*dots)[4]) {
  typename V::reg n[4], a[MQ > 0 ? MQ : 1][4];
  for (int r = 0; r < 4; ++r) {
    n[r] = V::zero();
    for (int i = 0; i < MQ; ++i) a[i][r] = V::zero();
  }
  size_t d = 0;
  for (; d + V::width <= dim; d += V::width) {
    typename V::reg x[4];
    for (int r = 0; r < 4; ++r) {
      x[r] = V::load(rows[r] + d);
      n[r] = V::fma(x[r], x[r], n[r]);
    }
    for (int i = 0; i < MQ; ++i) {
      const typename V::reg qv = V::load(q + i * dim + d);
      for (int r = 0; r < 4; ++r) a[i][r] = V::fma(qv, x[r], a[i][r]);
    }
  }
  _mm_storeu_ps(norms, V::hsum4(n));
  for (int i = 0; i < MQ; ++i) _mm_storeu_ps(dots[i], V::hsum4(a[i]));
  for (int r = 0; r < 4; ++r)
    for (size_t t = d; t < dim; ++t) {
      norms[r] = __builtin_fmaf(rows[r][t], rows[r][t], norms[r]);
      for (int i = 0; i < MQ; ++i) dots[i][r] = __builtin_fmaf(q[i * dim + t], rows[r][t], dots[i][r]);
    }
}

template <class V, int MQ>
void direct(const float* q, size_t dim, const float* g, size_t rows, size_t NR, const float* bound,
            bool inclusive, float* out, uint32_t* hits, float* gnorms) {
  float qn[MQ];
  for (int i = 0; i < MQ; ++i) {  // |q|^2 by the very chain of q.g, so |x - x|^2 = 0
    const float* qi = q + i * dim;
    const float* const same[4] = {qi, qi, qi, qi};
    float n[4];
    row_block<V, 0>(q, dim, same, n, nullptr);
    qn[i] = n[0];
  }
  for (int i = 0; i < MQ; ++i) hits[i] = 0;
  for (size_t j0 = 0; j0 < NR; j0 += 4) {
    // The gallery streams from memory once: ask for the next panel early.
    for (size_t l = 0; l < 4 * dim; l += 16)
      _mm_prefetch(reinterpret_cast<const char*>(g + (NR + j0) * dim + l), _MM_HINT_T0);
    const float* r[4];
    for (size_t k = 0; k < 4; ++k) r[k] = g + (j0 + k < rows ? j0 + k : 0) * dim;
    float dots[MQ][4];
    row_block<V, MQ>(q, dim, r, gnorms + j0, dots);
    for (size_t k = 0; k < 4; ++k) {
      const bool valid = j0 + k < rows;
      if (!valid) gnorms[j0 + k] = 0.f;
      for (int i = 0; i < MQ; ++i) {
        const float v = (qn[i] + gnorms[j0 + k]) - (dots[i][k] + dots[i][k]);
        const float dist = v > 0.f ? v : 0.f;
        out[i * NR + j0 + k] = dist;
        if (bound && valid && (inclusive ? dist <= bound[i] : dist < bound[i])) hits[i] |= 1u << (j0 + k);
      }
    }
  }
}

template <class V>
void direct_rows(const float* q, size_t mq, size_t dim, const float*, const float* g, size_t rows,
                 const float* bound, bool inclusive, float* out, uint32_t* hits, float* gnorms) {
  constexpr size_t NR = 2 * V::width;
  if (mq == 1) direct<V, 1>(q, dim, g, rows, NR, bound, inclusive, out, hits, gnorms);
  else direct<V, kDirectRows>(q, dim, g, rows, NR, bound, inclusive, out, hits, gnorms);
}

// MR query rows x one panel of 2 vectors (2 * V::width gallery rows).
template <class V, int MR>
void micro(const float* q, size_t dim, const float* qn, const float* panel, const float* gn,
           const float* bound, bool inclusive, float* out, uint32_t* hits) {
  constexpr size_t W = V::width, NR = 2 * W;
  typename V::reg a0[MR], a1[MR];
  for (int i = 0; i < MR; ++i) a0[i] = a1[i] = V::zero();
  for (size_t d = 0; d < dim; ++d) {
    const typename V::reg b0 = V::load(panel + d * NR), b1 = V::load(panel + d * NR + W);
    for (int i = 0; i < MR; ++i) {
      const typename V::reg x = V::set1(q[i * dim + d]);
      a0[i] = V::fma(x, b0, a0[i]);
      a1[i] = V::fma(x, b1, a1[i]);
    }
  }
  const typename V::reg g0 = V::load(gn), g1 = V::load(gn + W);
  for (int i = 0; i < MR; ++i) {
    // |q|^2 + |g|^2 - 2 q.g, clamped at 0 against rounding.
    const typename V::reg t = V::set1(qn[i]);
    const typename V::reg d0 = V::max(V::zero(), V::sub(V::add(t, g0), V::add(a0[i], a0[i])));
    const typename V::reg d1 = V::max(V::zero(), V::sub(V::add(t, g1), V::add(a1[i], a1[i])));
    V::store(out + i * NR, d0);
    V::store(out + i * NR + W, d1);
    if (bound) {
      const typename V::reg lim = V::set1(bound[i]);
      hits[i] = V::below(d0, lim, inclusive) | (V::below(d1, lim, inclusive) << W);
    }
  }
}

// Runtime row count -> compile-time micro-kernel.
template <class V, int MR>
void distances(const float* q, size_t mr, size_t dim, const float* qn, const float* panel,
               const float* gn, const float* bound, bool inclusive, float* out, uint32_t* hits) {
  if constexpr (MR > 1) {
    if (mr < MR) {
      distances<V, MR - 1>(q, mr, dim, qn, panel, gn, bound, inclusive, out, hits);
      return;
    }
  }
  micro<V, MR>(q, dim, qn, panel, gn, bound, inclusive, out, hits);
}

// Compressed rows to float32, V::width values per step (F16C / AVX-512F
// conversions; sign extension then an exact int -> float conversion and one
// multiply by the row's scale, as the portable kernels do).
template <class V>
void widen_f16(const std::uint16_t* x, size_t n, float* out) {
  size_t i = 0;
  for (; i + V::width <= n; i += V::width) V::store(out + i, V::from_f16(x + i));
  for (; i < n; ++i) out[i] = _cvtsh_ss(x[i]);
}

template <class V>
void widen_i8(const std::int8_t* x, size_t n, float scale, float* out) {
  const typename V::reg s = V::set1(scale);
  size_t i = 0;
  for (; i + V::width <= n; i += V::width) V::store(out + i, V::mul(V::from_i8(x + i), s));
  for (; i < n; ++i) out[i] = float(x[i]) * scale;
}

// MQ queries against 4 compressed rows at a time, converted in registers,
// V::width partial chains per dot summed by V::hsum4 (a short group repeats
// its last row).
inline float code_value(std::uint16_t h) { return _cvtsh_ss(h); }
inline float code_value(std::int8_t c) { return float(c); }

template <class V, int MQ, class Code>
void code_dots(const float* q, size_t dim, const Code* g, size_t rows, float* out) {
  for (size_t j0 = 0; j0 < rows; j0 += 4) {
    const Code* r[4];
    for (size_t k = 0; k < 4; ++k) r[k] = g + (j0 + k < rows ? j0 + k : rows - 1) * dim;
    for (size_t l = 0; l < 4 * dim * sizeof(Code); l += 64)  // the stream, a few groups ahead
      _mm_prefetch(reinterpret_cast<const char*>(g + (j0 + 16) * dim) + l, _MM_HINT_T0);
    typename V::reg a[MQ][4];
    for (int i = 0; i < MQ; ++i)
      for (int k = 0; k < 4; ++k) a[i][k] = V::zero();
    size_t d = 0;
    for (; d + V::width <= dim; d += V::width) {
      typename V::reg x[4];
      for (int k = 0; k < 4; ++k) x[k] = V::from_code(r[k] + d);
      for (int i = 0; i < MQ; ++i) {
        const typename V::reg qv = V::load(q + i * dim + d);
        for (int k = 0; k < 4; ++k) a[i][k] = V::fma(qv, x[k], a[i][k]);
      }
    }
    float dots[MQ][4];
    for (int i = 0; i < MQ; ++i) _mm_storeu_ps(dots[i], V::hsum4(a[i]));
    for (size_t k = 0; k < 4 && j0 + k < rows; ++k)
      for (int i = 0; i < MQ; ++i) {
        float s = dots[i][k];
        for (size_t t = d; t < dim; ++t) s = __builtin_fmaf(q[i * dim + t], code_value(r[k][t]), s);
        out[i * rows + j0 + k] = s;
      }
  }
}

template <class V, class Code>
void dots_rows(const float* q, size_t mq, size_t dim, const Code* g, size_t rows, float* out) {
  if (mq == 1) code_dots<V, 1>(q, dim, g, rows, out);
  else code_dots<V, kDirectRows>(q, dim, g, rows, out);
}

template <class V, int MR>
constexpr facesdk::detail::TileKernels make_kernels(const char* name, decltype(facesdk::detail::TileKernels::mls) mls) {
  return {name,          2 * V::width,      MR, kDirectRows, pack_panel<2 * V::width>, row_norms,
          distances<V, MR>, direct_rows<V>, mls, widen_f16<V>, widen_i8<V>,
          dots_rows<V, std::uint16_t>, dots_rows<V, std::int8_t>};
}

}  // namespace
