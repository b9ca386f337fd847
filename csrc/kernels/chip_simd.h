// Internal: dlib's bilinear chip sampling, one pixel at a time (every chip.cpp
// path falls back to it), and the AVX-512 RGB sampler of chip_avx512.cpp.
//
// The helpers have internal linkage on purpose: each translation unit compiles
// its own copy for its own instruction set, so a baseline caller never runs a
// copy built for AVX-512.
#pragma once

#include <cstddef>
#include <cstdint>

namespace facesdk::detail {

// The whole n x n RGB chip (as chip.cpp's sample_chip); null where the build
// has no AVX-512 code (not x86-64).
using SampleRgb = void (*)(const std::uint8_t* image, std::size_t rows, std::size_t cols, const double mx[3],
                           const double my[3], std::size_t n, std::uint8_t* out);
SampleRgb avx512_sample_rgb();

}  // namespace facesdk::detail

namespace {

// Pixel values as doubles: a table load instead of an int-to-double conversion per neighbour
// (measured: the conversions were most of the kernel's time).
struct ByteToDouble {
  double v[256];
  ByteToDouble() {
    for (int i = 0; i < 256; ++i) v[i] = double(i);
  }
};
const ByteToDouble kByte;

// One chip pixel from its 4 neighbours (top-left at `top`), as dlib's interpolate_bilinear.
template <std::size_t Channels>
inline void blend(const std::uint8_t* top, std::size_t stride, std::size_t channels, double lr, double tb,
                  std::uint8_t* pixel) {
  const std::size_t ch = Channels ? Channels : channels;  // a constant for RGB: unrolled
  const std::uint8_t* bottom = top + stride;
  const double ilr = 1 - lr, itb = 1 - tb;
  for (std::size_t k = 0; k < ch; ++k) {
    const double upper = (kByte.v[top[k]] * ilr + kByte.v[top[k + ch]] * lr) * itb;
    const double lower = (kByte.v[bottom[k]] * ilr + kByte.v[bottom[k + ch]] * lr) * tb;
    pixel[k] = std::uint8_t(upper + lower);  // truncated, as dlib's assign_pixel
  }
}

// Chip pixel (c, r).
template <std::size_t Channels>
inline void sample_one(const std::uint8_t* image, std::size_t rows, std::size_t cols, std::size_t channels,
                       const double mx[3], const double my[3], std::size_t r, std::size_t c, std::uint8_t* pixel) {
  const std::size_t ch = Channels ? Channels : channels;
  const double x = (mx[0] * double(c) + mx[1] * double(r)) + mx[2];
  const double y = (my[0] * double(c) + my[1] * double(r)) + my[2];
  // dlib: black unless all 4 neighbours lie inside. For an integer k, floor(x) >= 0 and
  // floor(x) < k hold exactly when x >= 0 and x < k (NaN fails both), and inside that
  // range truncation is floor: no libm call per pixel.
  if (!(x >= 0 && y >= 0 && x < double(cols) - 1 && y < double(rows) - 1)) {
    for (std::size_t k = 0; k < ch; ++k) pixel[k] = 0;
    return;
  }
  const auto left = std::size_t(x), top = std::size_t(y);
  blend<Channels>(image + (top * cols + left) * ch, cols * ch, ch, x - double(left), y - double(top), pixel);
}

}  // namespace
