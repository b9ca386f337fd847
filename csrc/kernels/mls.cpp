// Mutual likelihood score (PFE): argument checks and the scorer that runs the
// per-instruction-set `mls` kernels of tile.h inside the scan of scan.h.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
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

struct Gaussians {  // `rows` rows of (mu, sigma^2), and their names for errors
  const float* mu;
  const float* s;
  size_t rows;
  const char* mu_name;
  const char* s_name;
};

void check_args(const Gaussians& Q, const Gaussians& G, size_t dim) {
  if (dim == 0) throw std::invalid_argument("dim must be >= 1");
  for (const Gaussians* x : {&Q, &G}) {
    if (x->rows > 0 && !x->mu) throw std::invalid_argument(std::string(x->mu_name) + " is null but has rows");
    if (x->rows > 0 && !x->s) throw std::invalid_argument(std::string(x->s_name) + " is null but has rows");
  }
  if (Q.rows > std::numeric_limits<std::uint32_t>::max())
    throw std::invalid_argument("Q_mu has more than 2^32 - 1 rows");
}

inline bool valid_variance(float s) { return s >= kMlsMinVariance && s <= kMlsMaxVariance; }

std::string format_float(float x) {
  char text[32];
  std::snprintf(text, sizeof text, "%.9g", double(x));
  return text;
}

inline std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// Throws for the first row in [begin, end) with a non-finite mu or a variance
// out of range. The first pass only tests, on the bit patterns so that it
// vectorises (a finite float has a below-Inf magnitude; positive floats order
// as their bits, NaN and negatives above every valid variance); the second
// finds and names the culprit.
void check_rows(const Gaussians& x, size_t begin, size_t end, size_t dim) {
  const float* mu = x.mu + begin * dim;
  const float* s = x.s + begin * dim;
  const size_t n = (end - begin) * dim;
  constexpr std::uint32_t inf = 0x7F800000u;
  const std::uint32_t lo = bits_of(kMlsMinVariance), span = bits_of(kMlsMaxVariance) - lo;
  std::uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i)
    bad |= std::uint32_t((bits_of(mu[i]) & 0x7FFFFFFFu) >= inf) | std::uint32_t(bits_of(s[i]) - lo > span);
  if (!bad) return;
  for (size_t r = begin; r < end; ++r)
    for (size_t d = 0; d < dim; ++d) {
      if (!std::isfinite(x.mu[r * dim + d]))
        throw std::invalid_argument(std::string(x.mu_name) + " row " + std::to_string(r) +
                                    " contains NaN or Inf (at dim " + std::to_string(d) + ")");
      if (const float v = x.s[r * dim + d]; !valid_variance(v))
        throw std::invalid_argument(std::string(x.s_name) + " row " + std::to_string(r) + " has " +
                                    format_float(v) + " at dim " + std::to_string(d) +
                                    ": variances must be finite and in [" + format_float(kMlsMinVariance) +
                                    ", " + format_float(kMlsMaxVariance) + "]");
    }
}

Gaussians queries(const float* mu, const float* s, size_t rows) {
  return {mu, s, rows, "Q_mu (query mu)", "Q_s (query sigma^2)"};
}
Gaussians gallery(const float* mu, const float* s, size_t rows) {
  return {mu, s, rows, "G_mu (gallery mu)", "G_s (gallery sigma^2)"};
}

// Nothing to pack: the kernels read gallery rows in place, so the gallery is
// only cut into cache-sized tiles of whole 4-row groups, each validated by the
// thread that scores it (the gallery is read from memory once), and each query
// is scored against a whole tile per call.
struct MlsScorer {
  const TileKernels& K;
  const Gaussians &Q, &G;
  size_t nq, ng, dim;

  // A pair-dim of MLS costs about ten of squared L2's.
  static double work_per_thread() { return 1 << 17; }
  static size_t granule() { return 4; }
  Layout layout(int threads) const {  // small enough that every thread gets a tile
    size_t tile = std::max<size_t>(4, detail::kTileBytes / (2 * dim * sizeof(float)));
    tile = std::min(tile, (ng + size_t(threads) - 1) / size_t(threads));
    return {std::max<size_t>(4, (tile + 3) / 4 * 4), 1};
  }
  static size_t query_rows() { return 1; }
  static size_t gallery_rows(const Layout& L) { return L.unit_rows; }

  using Workspace = std::vector<float>;  // one query's scores against a tile
  static Workspace workspace(const Layout& L) { return Workspace(L.unit_rows); }
  void load(Workspace&, size_t j_begin, size_t j_end) const { check_rows(G, j_begin, j_end, dim); }
  Block score(Workspace& scores, size_t i, size_t, size_t j0, size_t rows, const float*, bool) const {
    K.mls(Q.mu + i * dim, Q.s + i * dim, G.mu + j0 * dim, G.s + j0 * dim, rows, dim, scores.data());
    return {scores.data(), rows, nullptr};
  }
};

// Checks the queries; runs the scan unless there are none (the gallery is
// still checked then).
template <class Collector>
void run(const Gaussians& Q, const Gaussians& G, size_t dim, Collector& out) {
  check_rows(Q, 0, Q.rows, dim);
  if (Q.rows == 0) return check_rows(G, 0, G.rows, dim);
  detail::scan(MlsScorer{detail::active_kernels(), Q, G, Q.rows, G.rows, dim}, out);
}

}  // namespace

void mls(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s, size_t ng,
         size_t dim, float* out) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (nq * ng > 0 && !out) throw std::invalid_argument("out is null");
  detail::MatrixCollector sink{out, ng};
  run(Q, G, dim, sink);
}

MlsMatches mls_match(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s,
                     size_t ng, size_t dim, float threshold) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (std::isnan(threshold)) throw std::invalid_argument("threshold must be a number, got NaN");
  detail::MatchCollector<detail::HigherIsBetter> sink(nq, threshold);
  run(Q, G, dim, sink);
  MlsMatches m;
  sink.collect(m.query, m.gallery, m.score);
  return m;
}

void mls_topk(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s, size_t ng,
              size_t dim, size_t k, std::int64_t* idx, float* score) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  if (nq > 0 && (!idx || !score)) throw std::invalid_argument("idx or score is null");
  detail::TopkCollector<detail::HigherIsBetter> sink(nq, k, ng);
  run(Q, G, dim, sink);
  sink.collect(k, idx, score);
}

}  // namespace facesdk
