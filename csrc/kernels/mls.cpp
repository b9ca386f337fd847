// Mutual likelihood score (PFE): argument checks, threading and the selection
// of matches / top-k around the per-instruction-set `mls` kernels of tile.h.
//
// Unlike squared L2 there is nothing to pack: the kernels read gallery rows in
// place, so the gallery is only cut into cache-sized tiles, one contiguous run
// of tiles per thread, and every query is swept over a tile while it is hot.
// Each gallery tile is validated by the thread that scores it, so the gallery
// is read from memory once.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "facesdk/kernels.h"
#include "tile.h"

namespace facesdk {
namespace {

using detail::TileKernels;
using std::size_t;

// Pairs x dim below which one thread is faster than waking a team (a pair-dim
// of MLS costs about ten of squared L2's).
constexpr double kWorkPerThread = 1 << 17;
// Bytes of gallery (mu and sigma^2) a thread keeps hot while it sweeps all queries.
constexpr size_t kTileBytes = 256 * 1024;

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

// Scores every (query, gallery) pair and hands them to the sink a tile row at a
// time, as sink.block(thread, query, j0, rows, scores) with scores[j] for
// gallery row j0 + j. Queries must be checked already; the gallery is checked here.
template <class Sink>
void scan(const TileKernels& K, const Gaussians& Q, const Gaussians& G, size_t dim, Sink& sink) {
  const size_t nq = Q.rows, ng = G.rows;
  int threads = 1;
#ifdef _OPENMP
  const double work = double(nq) * double(ng) * double(dim);
  threads = int(std::max(1.0, std::min({double(omp_get_max_threads()), work / kWorkPerThread,
                                        double((ng + 3) / 4)})));
#endif
  // Cache-sized tiles of whole 4-row groups, small enough that every thread gets one.
  size_t tile = std::max<size_t>(4, kTileBytes / (2 * dim * sizeof(float)));
  tile = std::min(tile, (ng + size_t(threads) - 1) / size_t(threads));
  tile = std::max<size_t>(4, (tile + 3) / 4 * 4);
  const size_t tiles = (ng + tile - 1) / tile;
  sink.start(threads);
  // No exception may leave an OpenMP region: the first one stops every thread
  // and is rethrown after it.
  std::exception_ptr error;
  std::atomic<bool> stop{false};

#pragma omp parallel num_threads(threads) if (threads > 1)
  try {
    int t = 0;
#ifdef _OPENMP
    t = omp_get_thread_num();
#endif
    std::vector<float> scores(tile);
    for (size_t p = tiles * t / threads; p < tiles * (t + 1) / threads && !stop.load(std::memory_order_relaxed); ++p) {
      const size_t j0 = p * tile, rows = std::min(tile, ng - j0);
      check_rows(G, j0, j0 + rows, dim);
      for (size_t i = 0; i < nq; ++i) {
        K.mls(Q.mu + i * dim, Q.s + i * dim, G.mu + j0 * dim, G.s + j0 * dim, rows, dim, scores.data());
        sink.block(t, i, j0, rows, scores.data());
      }
    }
  } catch (...) {
#pragma omp critical(facesdk_mls_scan_error)
    if (!error) error = std::current_exception();
    stop = true;
  }
  if (error) std::rethrow_exception(error);
}

// mls: every score into the full matrix.
struct MatrixSink {
  float* out;
  size_t ng;
  void start(int) {}
  void block(int, size_t i, size_t j0, size_t rows, const float* scores) {
    std::memcpy(out + i * ng + j0, scores, rows * sizeof(float));
  }
};

// mls_match: every score >= threshold, per thread in (query, gallery) order
// for each query.
struct MatchSink {
  struct Hit {
    std::int64_t gallery;
    std::uint32_t query;
    float score;
  };
  size_t nq;
  float threshold;
  std::vector<std::vector<Hit>> hits;
  void start(int threads) { hits.assign(threads, {}); }
  void block(int t, size_t i, size_t j0, size_t rows, const float* scores) {
    for (size_t j = 0; j < rows; ++j)
      if (scores[j] >= threshold) hits[t].push_back({std::int64_t(j0 + j), std::uint32_t(i), scores[j]});
  }
  // Counting sort by query; within a query, threads and tiles already ascend.
  MlsMatches collect() const {
    std::vector<size_t> start(nq + 1, 0);
    for (const auto& th : hits)
      for (const Hit& h : th) ++start[h.query + 1];
    for (size_t i = 0; i < nq; ++i) start[i + 1] += start[i];
    MlsMatches m;
    m.query.resize(start[nq]);
    m.gallery.resize(start[nq]);
    m.score.resize(start[nq]);
    for (const auto& th : hits)
      for (const Hit& h : th) {
        const size_t at = start[h.query]++;
        m.query[at] = h.query;
        m.gallery[at] = h.gallery;
        m.score[at] = h.score;
      }
    return m;
  }
};

// mls_topk: per thread and query, the best k so far, highest first. Gallery
// rows arrive in ascending order, so a newcomer goes after equal scores and
// only a strictly higher score displaces a full list's last entry.
struct TopkSink {
  size_t nq, k;
  struct State {
    std::vector<float> score;
    std::vector<std::int64_t> idx;
    std::vector<size_t> count;
  };
  std::vector<State> states;
  void start(int threads) {
    states.assign(threads, {});
    for (State& s : states) {
      s.score.resize(nq * k);
      s.idx.resize(nq * k);
      s.count.assign(nq, 0);
    }
  }
  void block(int t, size_t i, size_t j0, size_t rows, const float* scores) {
    State& s = states[t];
    float* best = s.score.data() + i * k;
    std::int64_t* idx = s.idx.data() + i * k;
    size_t& count = s.count[i];
    for (size_t j = 0; j < rows; ++j) {
      const float v = scores[j];
      if (count == k && !(v > best[k - 1])) continue;
      size_t pos = count < k ? count++ : k - 1;
      for (; pos > 0 && best[pos - 1] < v; --pos) {
        best[pos] = best[pos - 1];
        idx[pos] = idx[pos - 1];
      }
      best[pos] = v;
      idx[pos] = std::int64_t(j0 + j);
    }
  }
  // Merges the threads' lists (of `out_k` >= k entries per query, padded);
  // a stable sort keeps lower chunks (indices) first on ties.
  void collect(size_t out_k, std::int64_t* idx_out, float* score_out) const {
    std::vector<std::pair<float, std::int64_t>> cand;
    for (size_t q = 0; q < nq; ++q) {
      cand.clear();
      for (const State& s : states)
        for (size_t r = 0; r < s.count[q]; ++r) cand.emplace_back(s.score[q * k + r], s.idx[q * k + r]);
      std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      for (size_t r = 0; r < out_k; ++r) {
        const bool have = r < k && r < cand.size();
        idx_out[q * out_k + r] = have ? cand[r].second : -1;
        score_out[q * out_k + r] = have ? cand[r].first : -std::numeric_limits<float>::infinity();
      }
    }
  }
};

}  // namespace

void mls(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s, size_t ng,
         size_t dim, float* out) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (nq * ng > 0 && !out) throw std::invalid_argument("out is null");
  check_rows(Q, 0, nq, dim);
  if (nq == 0) return check_rows(G, 0, ng, dim);
  MatrixSink sink{out, ng};
  scan(detail::active_kernels(), Q, G, dim, sink);
}

MlsMatches mls_match(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s,
                     size_t ng, size_t dim, float threshold) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (std::isnan(threshold)) throw std::invalid_argument("threshold must be a number, got NaN");
  check_rows(Q, 0, nq, dim);
  if (nq == 0) {
    check_rows(G, 0, ng, dim);
    return {};
  }
  MatchSink sink{nq, threshold, {}};
  scan(detail::active_kernels(), Q, G, dim, sink);
  return sink.collect();
}

void mls_topk(const float* Q_mu, const float* Q_s, size_t nq, const float* G_mu, const float* G_s, size_t ng,
              size_t dim, size_t k, std::int64_t* idx, float* score) {
  const Gaussians Q = queries(Q_mu, Q_s, nq), G = gallery(G_mu, G_s, ng);
  check_args(Q, G, dim);
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  if (nq > 0 && (!idx || !score)) throw std::invalid_argument("idx or score is null");
  check_rows(Q, 0, nq, dim);
  if (nq == 0) return check_rows(G, 0, ng, dim);
  // Per-thread lists need no more than ng entries; the rest is padding.
  TopkSink sink{nq, std::max<size_t>(1, std::min(k, ng)), {}};
  if (ng > 0) scan(detail::active_kernels(), Q, G, dim, sink);
  else sink.start(1);
  sink.collect(k, idx, score);
}

}  // namespace facesdk
