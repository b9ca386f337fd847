// Internal: one instruction set's micro-kernels (squared-L2 distances and the
// mutual likelihood score).
//
// The gallery is consumed in panels of `panel_width` rows packed transposed
// ([dim][panel_width]), so the micro-kernel loads consecutive gallery rows as
// one vector and accumulates each dot product as a single chain over d. Norms
// are accumulated by the same chain, which makes |x - x|^2 exactly 0 and a
// pair's distance independent of where it falls in a tile or thread.
#pragma once

#include <cstddef>
#include <cstdint>

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
};

const TileKernels* generic_kernels();
// Null where the instruction set is not compiled in (non-x86 builds).
const TileKernels* avx2_kernels();
const TileKernels* avx512_kernels();

// (D/2) log(2 pi), the constant term of the mutual likelihood score.
inline double mls_constant(std::size_t dim) { return 0.5 * double(dim) * 1.8378770664093454836; }

}  // namespace facesdk::detail
