// Squared L2 over float32 galleries: argument checks, then the scorer of
// l2_scorer.h inside the scan of scan.h.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "dispatch.h"
#include "facesdk/kernels.h"
#include "l2_scorer.h"

namespace facesdk {
namespace {

using detail::checked_norms;
using detail::TileKernels;
using std::size_t;

void check_inputs(const float* Q, size_t nq, const float* G, size_t ng, size_t dim) {
  if (dim == 0) throw std::invalid_argument("dim must be >= 1");
  if (nq > 0 && !Q) throw std::invalid_argument("Q is null but nq > 0");
  if (ng > 0 && !G) throw std::invalid_argument("G is null but ng > 0");
  if (nq > std::numeric_limits<std::uint32_t>::max())
    throw std::invalid_argument("Q has more than 2^32 - 1 rows");
}

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
  detail::scan(detail::L2Scorer<detail::Float32Rows>{K, Q, qn.data(), {G, dim}, nq, ng, dim}, out);
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
