// Squared L2: argument checks and the scorer that runs the packed (or, for a
// query or two, direct) micro-kernels of tile.h inside the scan of scan.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dispatch.h"
#include "facesdk/kernels.h"
#include "scan.h"
#include "tile.h"

namespace facesdk {
namespace {

using detail::Block;
using detail::Layout;
using detail::TileKernels;
using std::size_t;

void check_inputs(const float* Q, size_t nq, const float* G, size_t ng, size_t dim) {
  if (dim == 0) throw std::invalid_argument("dim must be >= 1");
  if (nq > 0 && !Q) throw std::invalid_argument("Q is null but nq > 0");
  if (ng > 0 && !G) throw std::invalid_argument("G is null but ng > 0");
  if (nq > std::numeric_limits<std::uint32_t>::max())
    throw std::invalid_argument("Q has more than 2^32 - 1 rows");
}

[[noreturn]] void throw_not_finite(const char* name, size_t row) {
  throw std::invalid_argument(std::string(name) + " row " + std::to_string(row) +
                              " contains NaN or Inf (or its squared norm overflows float32)");
}

void check_norms(const float* norms, size_t first_row, size_t rows, const char* name) {
  for (size_t r = 0; r < rows; ++r)
    if (!std::isfinite(norms[r])) throw_not_finite(name, first_row + r);
}

std::vector<float> checked_norms(const TileKernels& K, const float* X, size_t rows, size_t dim,
                                 const char* name) {
  std::vector<float> norms(rows);
  K.norms(X, rows, dim, norms.data());
  check_norms(norms.data(), 0, rows, name);
  return norms;
}

// Gallery tiles are packed into panels of panel_width rows (and their norms
// checked) by the thread that sweeps them; up to direct_rows queries read the
// gallery in place instead, since packing would cost more than the arithmetic.
struct L2Scorer {
  const TileKernels& K;
  const float *Q, *qnorms, *G;
  size_t nq, ng, dim;
  bool direct = nq <= K.direct_rows;

  static double work_per_thread() { return 1 << 20; }
  size_t granule() const { return K.panel_width; }
  Layout layout(int) const {
    return {K.panel_width, std::max<size_t>(1, detail::kTileBytes / (K.panel_width * dim * sizeof(float)))};
  }
  size_t query_rows() const { return direct ? nq : K.block_rows; }
  size_t gallery_rows(const Layout&) const { return K.panel_width; }

  struct Workspace {
    std::vector<float> packed, gnorms, dist;
    std::vector<std::uint32_t> hits;
    size_t j0 = 0;  // first row of the packed tile
  };
  Workspace workspace(const Layout& L) const {
    const size_t NR = K.panel_width;
    return {std::vector<float>(direct ? 0 : L.step * NR * dim), std::vector<float>(L.step * NR),
            std::vector<float>(K.block_rows * NR), std::vector<std::uint32_t>(K.block_rows)};
  }
  void load(Workspace& w, size_t j_begin, size_t j_end) const {
    if (direct) return;
    const size_t NR = K.panel_width;
    w.j0 = j_begin;
    for (size_t j0 = j_begin; j0 < j_end; j0 += NR) {
      const size_t rows = std::min(NR, j_end - j0), at = j0 - j_begin;
      K.pack(G + j0 * dim, rows, dim, w.packed.data() + at * dim, w.gnorms.data() + at);
      check_norms(w.gnorms.data() + at, j0, rows, "G");
    }
  }
  Block score(Workspace& w, size_t i0, size_t mr, size_t j0, size_t ncols, const float* bound,
              bool inclusive) const {
    if (direct) {
      K.direct(Q, mr, dim, qnorms, G + j0 * dim, ncols, bound, inclusive, w.dist.data(), w.hits.data(),
               w.gnorms.data());
      check_norms(w.gnorms.data(), j0, ncols, "G");
    } else {
      const size_t at = j0 - w.j0;
      K.distances(Q + i0 * dim, mr, dim, qnorms + i0, w.packed.data() + at * dim, w.gnorms.data() + at, bound,
                  inclusive, w.dist.data(), w.hits.data());
    }
    return {w.dist.data(), K.panel_width, w.hits.data()};
  }
};

// Checks the arguments and the query norms; runs the scan unless there are no
// queries (the gallery is still checked then).
template <class Collector>
void run(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, Collector& out) {
  const TileKernels& K = detail::active_kernels();
  const std::vector<float> qn = checked_norms(K, Q, nq, dim, "Q");
  if (nq == 0) {
    checked_norms(K, G, ng, dim, "G");
    return;
  }
  detail::scan(L2Scorer{K, Q, qn.data(), G, nq, ng, dim}, out);
}

}  // namespace

void sq_l2(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, float* out) {
  check_inputs(Q, nq, G, ng, dim);
  if (nq * ng > 0 && !out) throw std::invalid_argument("out is null");
  detail::MatrixCollector sink{out, ng};
  run(Q, nq, G, ng, dim, sink);
}

Matches match(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, float threshold) {
  check_inputs(Q, nq, G, ng, dim);
  if (std::isnan(threshold) || threshold < 0)
    throw std::invalid_argument("threshold must be a non-negative number, got " + std::to_string(threshold));
  detail::MatchCollector<detail::LowerIsBetter> sink(nq, threshold);
  run(Q, nq, G, ng, dim, sink);
  Matches m;
  sink.collect(m.query, m.gallery, m.distance);
  return m;
}

void topk(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, size_t k, std::int64_t* idx,
          float* dist) {
  check_inputs(Q, nq, G, ng, dim);
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  if (nq > 0 && (!idx || !dist)) throw std::invalid_argument("idx or dist is null");
  detail::TopkCollector<detail::LowerIsBetter> sink(nq, k, ng);
  run(Q, nq, G, ng, dim, sink);
  sink.collect(k, idx, dist);
}

}  // namespace facesdk
