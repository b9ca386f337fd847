// Internal: the squared-L2 scorer of scan.h, shared by the float32 calls
// (distance.cpp) and the compressed galleries (compressed.cpp). Where the
// gallery's float32 rows come from is the Source: the caller's array as it is,
// or compressed rows widened to float32 a panel at a time.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "scan.h"
#include "tile.h"

namespace facesdk::detail {

[[noreturn]] inline void throw_not_finite(const char* name, std::size_t row) {
  throw std::invalid_argument(std::string(name) + " row " + std::to_string(row) +
                              " contains NaN or Inf (or its squared norm overflows float32)");
}

inline void check_norms(const float* norms, std::size_t first_row, std::size_t rows, const char* name) {
  for (std::size_t r = 0; r < rows; ++r)
    if (!std::isfinite(norms[r])) throw_not_finite(name, first_row + r);
}

inline std::vector<float> checked_norms(const TileKernels& K, const float* X, std::size_t rows, std::size_t dim,
                                        const char* name) {
  std::vector<float> norms(rows);
  K.norms(X, rows, dim, norms.data());
  check_norms(norms.data(), 0, rows, name);
  return norms;
}

// Float32 rows read in place.
struct Float32Rows {
  const float* G;
  std::size_t dim;
  std::size_t buffer_floats(std::size_t) const { return 0; }
  const float* rows(float*, std::size_t j0, std::size_t) const { return G + j0 * dim; }
};

// Gallery tiles are packed into panels of panel_width rows (and their norms
// checked) by the thread that sweeps them; up to direct_rows queries read the
// gallery rows in place instead, since packing would cost more than the
// arithmetic. A pair's distance depends only on the query batch's path (packed
// or direct), never on where the row falls: compressed.cpp's exact re-rank
// relies on that.
template <class Source>
struct L2Scorer {
  const TileKernels& K;
  const float *Q, *qnorms;
  Source G;
  std::size_t nq, ng, dim;
  bool direct = nq <= K.direct_rows;

  static double work_per_thread() { return 1 << 20; }
  std::size_t granule() const { return K.panel_width; }
  Layout layout(int) const {
    return {K.panel_width, std::max<std::size_t>(1, kTileBytes / (K.panel_width * dim * sizeof(float)))};
  }
  std::size_t query_rows() const { return direct ? nq : K.block_rows; }
  std::size_t gallery_rows(const Layout&) const { return K.panel_width; }

  struct Workspace {
    std::vector<float> packed, gnorms, dist, rows;
    std::vector<std::uint32_t> hits;
    std::size_t j0 = 0;  // first row of the packed tile
  };
  Workspace workspace(const Layout& L) const {
    const std::size_t NR = K.panel_width;
    return {std::vector<float>(direct ? 0 : L.step * NR * dim), std::vector<float>(L.step * NR),
            std::vector<float>(K.block_rows * NR), std::vector<float>(G.buffer_floats(NR)),
            std::vector<std::uint32_t>(K.block_rows)};
  }
  void load(Workspace& w, std::size_t j_begin, std::size_t j_end) const {
    if (direct) return;
    const std::size_t NR = K.panel_width;
    w.j0 = j_begin;
    for (std::size_t j0 = j_begin; j0 < j_end; j0 += NR) {
      const std::size_t rows = std::min(NR, j_end - j0), at = j0 - j_begin;
      K.pack(G.rows(w.rows.data(), j0, rows), rows, dim, w.packed.data() + at * dim, w.gnorms.data() + at);
      check_norms(w.gnorms.data() + at, j0, rows, "G");
    }
  }
  Block score(Workspace& w, std::size_t i0, std::size_t mr, std::size_t j0, std::size_t ncols,
              const float* bound, bool inclusive) const {
    if (direct) {
      K.direct(Q, mr, dim, qnorms, G.rows(w.rows.data(), j0, ncols), ncols, bound, inclusive, w.dist.data(),
               w.hits.data(), w.gnorms.data());
      check_norms(w.gnorms.data(), j0, ncols, "G");
    } else {
      const std::size_t at = j0 - w.j0;
      K.distances(Q + i0 * dim, mr, dim, qnorms + i0, w.packed.data() + at * dim, w.gnorms.data() + at, bound,
                  inclusive, w.dist.data(), w.hits.data());
    }
    return {w.dist.data(), K.panel_width, w.hits.data()};
  }
};

}  // namespace facesdk::detail
