// dlib's bilinear chip sampling for RGB on AVX-512F: 8 chip pixels at a time,
// the same double operations in the same order as chip.cpp's scalar pixel
// (AVX-512 arithmetic is IEEE like the scalar's, and -ffp-contract=off keeps it
// unfused), so every pixel is the same, bit for bit. A vector with a pixel
// whose neighbours are not all inside takes the scalar path.
#include "chip_simd.h"  // before the target pragma: its scalar helpers stay baseline code

#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx2")
// GCC 12's AVX-512 intrinsics build their "undefined" operands in a way its own warning flags.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstring>

namespace {

// Chip row r, columns [c, c + 8), all inside. Each neighbour pair of a row comes from two
// 4-byte loads: bytes [left - 1, left + 3) and [left + 2, left + 6) of the pixel row, each
// pixel in bytes 1 to 3; the first starts a byte early so that the second ends on the right
// pixel's last byte (nothing past the image is read; the caller skips the pixel at offset 0).
inline void blend8(const std::uint8_t* image, __m512i offset, std::size_t stride, __m512d lr, __m512d tb,
                   std::uint8_t* out) {
  const __m512d one = _mm512_set1_pd(1.0);
  const __m512d ilr = _mm512_sub_pd(one, lr), itb = _mm512_sub_pd(one, tb);
  const __m512i right = _mm512_add_epi64(offset, _mm512_set1_epi64(3));
  const __m512i down = _mm512_set1_epi64(std::int64_t(stride));
  const __m256i tl4 = _mm512_i64gather_epi32(offset, image, 1), tr4 = _mm512_i64gather_epi32(right, image, 1);
  const __m256i bl4 = _mm512_i64gather_epi32(_mm512_add_epi64(offset, down), image, 1);
  const __m256i br4 = _mm512_i64gather_epi32(_mm512_add_epi64(right, down), image, 1);
  const __m256i byte = _mm256_set1_epi32(0xFF);
  auto at = [&](__m256i v, unsigned k) {  // channel k of 8 pixels, as doubles
    return _mm512_cvtepi32_pd(_mm256_and_si256(_mm256_srli_epi32(v, 8 * (1 + k)), byte));
  };
  __m256i value[3];
  for (unsigned k = 0; k < 3; ++k) {
    const __m512d tl = at(tl4, k), tr = at(tr4, k), bl = at(bl4, k), br = at(br4, k);
    const __m512d upper = _mm512_mul_pd(_mm512_add_pd(_mm512_mul_pd(tl, ilr), _mm512_mul_pd(tr, lr)), itb);
    const __m512d lower = _mm512_mul_pd(_mm512_add_pd(_mm512_mul_pd(bl, ilr), _mm512_mul_pd(br, lr)), tb);
    value[k] = _mm512_cvttpd_epi32(_mm512_add_pd(upper, lower));  // truncated, in [0, 255]
  }
  // Interleave to 8 RGB pixels: lane i = c0 | c1 << 8 | c2 << 16, then 3 bytes of each lane.
  const __m256i packed = _mm256_or_si256(value[0], _mm256_or_si256(_mm256_slli_epi32(value[1], 8), _mm256_slli_epi32(value[2], 16)));
  const __m256i squeeze = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,  //
                                           0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  alignas(32) std::uint8_t bytes[32];
  _mm256_store_si256(reinterpret_cast<__m256i*>(bytes), _mm256_shuffle_epi8(packed, squeeze));
  std::memcpy(out, bytes, 12);
  std::memcpy(out + 12, bytes + 16, 12);
}

void sample_rgb(const std::uint8_t* image, std::size_t rows, std::size_t cols, const double mx[3], const double my[3],
                std::size_t n, std::uint8_t* out) {
  const std::size_t stride = cols * 3;
  const __m512d zero = _mm512_setzero_pd();
  const __m512d x_limit = _mm512_set1_pd(double(cols) - 1), y_limit = _mm512_set1_pd(double(rows) - 1);
  const __m512d mx0 = _mm512_set1_pd(mx[0]), mx2 = _mm512_set1_pd(mx[2]), my0 = _mm512_set1_pd(my[0]),
                my2 = _mm512_set1_pd(my[2]);
  const __m512d step = _mm512_setr_pd(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i stride64 = _mm512_set1_epi64(std::int64_t(stride)), three = _mm512_set1_epi64(3),
                one = _mm512_set1_epi64(1);
  for (std::size_t r = 0; r < n; ++r) {
    const __m512d rx = _mm512_set1_pd(mx[1] * double(r)), ry = _mm512_set1_pd(my[1] * double(r));
    std::uint8_t* row = out + r * n * 3;
    std::size_t c = 0;
    for (; c + 8 <= n; c += 8) {
      const __m512d cc = _mm512_add_pd(_mm512_set1_pd(double(c)), step);  // exact: integers
      const __m512d x = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(mx0, cc), rx), mx2);
      const __m512d y = _mm512_add_pd(_mm512_add_pd(_mm512_mul_pd(my0, cc), ry), my2);
      const __mmask8 inside = _mm512_cmp_pd_mask(x, zero, _CMP_GE_OQ) & _mm512_cmp_pd_mask(y, zero, _CMP_GE_OQ) &
                              _mm512_cmp_pd_mask(x, x_limit, _CMP_LT_OQ) & _mm512_cmp_pd_mask(y, y_limit, _CMP_LT_OQ);
      if (inside == 0xFF) {
        const __m256i xi = _mm512_cvttpd_epi32(x), yi = _mm512_cvttpd_epi32(y);  // floor: x, y >= 0
        const __m512d lr = _mm512_sub_pd(x, _mm512_cvtepi32_pd(xi)), tb = _mm512_sub_pd(y, _mm512_cvtepi32_pd(yi));
        // Byte offset of each top-left neighbour, less 1 (the first load starts there).
        const __m512i offset = _mm512_sub_epi64(
            _mm512_add_epi64(_mm512_mul_epu32(_mm512_cvtepi32_epi64(yi), stride64),
                             _mm512_mul_epu32(_mm512_cvtepi32_epi64(xi), three)),
            one);
        if (_mm512_cmp_epi64_mask(offset, _mm512_setzero_si512(), _MM_CMPINT_LT) == 0) {
          blend8(image, offset, stride, lr, tb, row + c * 3);
          continue;
        }
      }
      for (std::size_t k = c; k < c + 8; ++k) sample_one<3>(image, rows, cols, 3, mx, my, r, k, row + k * 3);
    }
    for (; c < n; ++c) sample_one<3>(image, rows, cols, 3, mx, my, r, c, row + c * 3);
  }
}

}  // namespace

facesdk::detail::SampleRgb facesdk::detail::avx512_sample_rgb() { return sample_rgb; }
#else
facesdk::detail::SampleRgb facesdk::detail::avx512_sample_rgb() { return nullptr; }
#endif
