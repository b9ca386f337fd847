// Internal: one instruction set's micro-kernels (squared-L2 distances, the
// mutual likelihood score, and the widening of compressed gallery rows).
//
// The gallery is consumed in panels of `panel_width` rows packed transposed
// ([dim][panel_width]), so the micro-kernel loads consecutive gallery rows as
// one vector and accumulates each dot product as a single chain over d. Norms
// are accumulated by the same chain, which makes |x - x|^2 exactly 0 and a
// pair's distance independent of where it falls in a tile or thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace facesdk::detail {

struct TileKernels {
  const char* name;
  std::size_t panel_width;  // gallery rows per packed panel (<= 32)
  std::size_t block_rows;   // query rows per micro-kernel call
  std::size_t direct_rows;  // at most this many queries skip packing (see direct)

  // Packs `rows` (<= panel_width) rows of g into `panel`, zero-filling the
  // rest, and writes their squared norms to norms[0, panel_width).
  void (*pack)(const float* g, std::size_t rows, std::size_t dim, float* panel,
               float* norms);

  // Squared norms of `rows` rows of x, accumulated exactly as `pack` does.
  void (*norms)(const float* x, std::size_t rows, std::size_t dim, float* out);

  // Squared distances of `mr` (<= block_rows) query rows to one packed panel,
  // written to out[i * panel_width + j]. When bound is not null, bit j of
  // hits[i] is set where out[i][j] < bound[i] (<= when inclusive).
  void (*distances)(const float* q, std::size_t mr, std::size_t dim,
                    const float* qnorms, const float* panel,
                    const float* gnorms, const float* bound, bool inclusive,
                    float* out, std::uint32_t* hits);

  // The same for mq <= direct_rows queries against `rows` (<= panel_width)
  // raw gallery rows, without packing; also writes the rows' squared norms.
  // Its rounding may differ from pack + distances (see tile_simd.h).
  void (*direct)(const float* q, std::size_t mq, std::size_t dim, const float* qnorms,
                 const float* g, std::size_t rows, const float* bound, bool inclusive,
                 float* out, std::uint32_t* hits, float* gnorms);

  // Mutual likelihood scores of one query (mu, sigma^2) against `rows` gallery
  // rows read in place (row-major, `dim` values each): out[j] for j < rows.
  // Every pair runs the same instruction sequence wherever it falls (see
  // mls_simd.h), so its score does not depend on rows, threads or batch size.
  // Variances must lie in [kMlsMinVariance, kMlsMaxVariance] (checked by the caller).
  void (*mls)(const float* q_mu, const float* q_s, const float* g_mu, const float* g_s,
              std::size_t rows, std::size_t dim, float* out);

  // Compressed gallery values widened to float32 (compressed.cpp): fp16
  // exactly, int8 as float(code) * scale (one rounding), so every instruction
  // set widens a row to the same bits.
  void (*widen_f16)(const std::uint16_t* x, std::size_t n, float* out);
  void (*widen_i8)(const std::int8_t* x, std::size_t n, float scale, float* out);

  // Dot products of mq <= direct_rows queries with `rows` compressed rows read
  // in place (int8: with the codes, before the row's scale), out[i * rows + j]:
  // a query or two streams the gallery once, converting in registers.
  void (*dots_f16)(const float* q, std::size_t mq, std::size_t dim, const std::uint16_t* g, std::size_t rows,
                   float* out);
  void (*dots_i8)(const float* q, std::size_t mq, std::size_t dim, const std::int8_t* g, std::size_t rows,
                  float* out);
};

const TileKernels* generic_kernels();
// Null where the instruction set is not compiled in (non-x86 builds).
const TileKernels* avx2_kernels();
const TileKernels* avx512_kernels();

// IEEE binary16 -> binary32, exact (the portable path; F16C does the same).
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else {  // zero or subnormal: mant * 2^-24, exact in float
    const float f = float(mant) * 0x1p-24f;
    std::memcpy(&bits, &f, sizeof bits);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

// (D/2) log(2 pi), the constant term of the mutual likelihood score.
inline double mls_constant(std::size_t dim) { return 0.5 * double(dim) * 1.8378770664093454836; }

}  // namespace facesdk::detail
