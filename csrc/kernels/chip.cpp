// dlib's bilinear chip sampling (transform_image with interpolate_bilinear, as
// extract_image_chip runs it): sdk/align.py finds the affine map and crops the
// source, this fills the chip. Double arithmetic in dlib's order, term by term
// (the build has -ffp-contract=off), so every pixel is dlib's, bit for bit.
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "chip_simd.h"
#include "dispatch.h"
#include "facesdk/kernels.h"

namespace facesdk {

namespace {

template <std::size_t Channels>
void sample(const std::uint8_t* image, std::size_t rows, std::size_t cols, std::size_t channels,
            const double mx[3], const double my[3], std::size_t n, std::uint8_t* out) {
  const std::size_t ch = Channels ? Channels : channels;
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t c = 0; c < n; ++c) sample_one<Channels>(image, rows, cols, channels, mx, my, r, c, out + (r * n + c) * ch);
}

#if defined(__SSE2__)
// RGB, two chip pixels at a time: the same double operations in the same order, two lanes
// wide (SSE2 arithmetic is IEEE like the scalar's, and -ffp-contract=off keeps it unfused).
// A pair with a pixel outside takes the scalar path.
void sample_rgb_pairs(const std::uint8_t* image, std::size_t rows, std::size_t cols, const double mx[3],
                      const double my[3], std::size_t n, std::uint8_t* out) {
  const std::size_t stride = cols * 3;
  const double last_col = double(cols) - 1, last_row = double(rows) - 1;
  const __m128d zero = _mm_setzero_pd(), one = _mm_set1_pd(1.0);
  const __m128d x_limit = _mm_set1_pd(last_col), y_limit = _mm_set1_pd(last_row);
  const __m128d mx0 = _mm_set1_pd(mx[0]), mx2 = _mm_set1_pd(mx[2]), my0 = _mm_set1_pd(my[0]), my2 = _mm_set1_pd(my[2]);
  for (std::size_t r = 0; r < n; ++r) {
    const __m128d rx = _mm_set1_pd(mx[1] * double(r)), ry = _mm_set1_pd(my[1] * double(r));
    std::size_t c = 0;
    for (; c + 1 < n; c += 2) {
      const __m128d cc = _mm_set_pd(double(c + 1), double(c));
      const __m128d x = _mm_add_pd(_mm_add_pd(_mm_mul_pd(mx0, cc), rx), mx2);
      const __m128d y = _mm_add_pd(_mm_add_pd(_mm_mul_pd(my0, cc), ry), my2);
      const __m128d inside = _mm_and_pd(_mm_and_pd(_mm_cmpge_pd(x, zero), _mm_cmpge_pd(y, zero)),
                                        _mm_and_pd(_mm_cmplt_pd(x, x_limit), _mm_cmplt_pd(y, y_limit)));
      std::uint8_t* pixel = out + (r * n + c) * 3;
      if (_mm_movemask_pd(inside) != 3) {
        sample_one<3>(image, rows, cols, 3, mx, my, r, c, pixel);
        sample_one<3>(image, rows, cols, 3, mx, my, r, c + 1, pixel + 3);
        continue;
      }
      const __m128i xi = _mm_cvttpd_epi32(x), yi = _mm_cvttpd_epi32(y);  // floor: x, y >= 0
      const __m128d lr = _mm_sub_pd(x, _mm_cvtepi32_pd(xi)), tb = _mm_sub_pd(y, _mm_cvtepi32_pd(yi));
      const __m128d ilr = _mm_sub_pd(one, lr), itb = _mm_sub_pd(one, tb);
      const std::uint8_t* p0 = image + std::size_t(_mm_cvtsi128_si32(yi)) * stride + std::size_t(_mm_cvtsi128_si32(xi)) * 3;
      const std::uint8_t* p1 = image + std::size_t(_mm_cvtsi128_si32(_mm_shuffle_epi32(yi, 1))) * stride +
                               std::size_t(_mm_cvtsi128_si32(_mm_shuffle_epi32(xi, 1))) * 3;
      for (std::size_t k = 0; k < 3; ++k) {
        const __m128d tl = _mm_set_pd(kByte.v[p1[k]], kByte.v[p0[k]]);
        const __m128d tr = _mm_set_pd(kByte.v[p1[k + 3]], kByte.v[p0[k + 3]]);
        const __m128d bl = _mm_set_pd(kByte.v[p1[k + stride]], kByte.v[p0[k + stride]]);
        const __m128d br = _mm_set_pd(kByte.v[p1[k + stride + 3]], kByte.v[p0[k + stride + 3]]);
        const __m128d upper = _mm_mul_pd(_mm_add_pd(_mm_mul_pd(tl, ilr), _mm_mul_pd(tr, lr)), itb);
        const __m128d lower = _mm_mul_pd(_mm_add_pd(_mm_mul_pd(bl, ilr), _mm_mul_pd(br, lr)), tb);
        const __m128i value = _mm_cvttpd_epi32(_mm_add_pd(upper, lower));  // truncated, in [0, 255]
        pixel[k] = std::uint8_t(_mm_cvtsi128_si32(value));
        pixel[k + 3] = std::uint8_t(_mm_cvtsi128_si32(_mm_shuffle_epi32(value, 1)));
      }
    }
    if (c < n) sample_one<3>(image, rows, cols, 3, mx, my, r, c, out + (r * n + c) * 3);
  }
}
#endif

}  // namespace

void sample_chip(const std::uint8_t* image, std::size_t rows, std::size_t cols, std::size_t channels,
                 const double mx[3], const double my[3], std::size_t n, std::uint8_t* out) {
  const bool int32_lanes = rows < (std::size_t(1) << 30) && cols < (std::size_t(1) << 30);
  static const detail::SampleRgb avx512 = detail::avx512_sample_rgb();
  if (channels == 3 && int32_lanes && avx512 && std::strcmp(detail::active_kernels().name, "avx512") == 0) {
    avx512(image, rows, cols, mx, my, n, out);
    return;
  }
#if defined(__SSE2__)
  if (channels == 3 && int32_lanes) {
    sample_rgb_pairs(image, rows, cols, mx, my, n, out);
    return;
  }
#endif
  if (channels == 3)
    sample<3>(image, rows, cols, channels, mx, my, n, out);
  else
    sample<0>(image, rows, cols, channels, mx, my, n, out);
}

}  // namespace facesdk
