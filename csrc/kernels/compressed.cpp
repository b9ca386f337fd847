// Compressed (fp16, int8) galleries: compression, and topk / match that return
// the float32 calls' results. The scan of scan.h runs the float32 scorer of
// l2_scorer.h over rows widened a panel at a time; a collector keeps the rows
// the error bound of facesdk/kernels.h cannot rule out, and those rows'
// float32 values, from exact_rows, are measured by the float32 kernels.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "facesdk/kernels.h"
#include "l2_scorer.h"

namespace facesdk {
namespace {

using detail::Block;
using detail::TileKernels;
using std::size_t;

constexpr double kInf = std::numeric_limits<double>::infinity();

// The smallest float >= x (x >= 0), after a relative margin that covers the
// double arithmetic that produced x.
float round_up(double x) {
  x *= 1 + 1e-9;
  float f = float(x);
  if (double(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// IEEE binary32 -> binary16, round to nearest even; |f| <= 65504 (checked by the caller).
std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7FFFFFFFu;
  if (x < 0x38800000u) {  // below 2^-14: a subnormal half, in units of 2^-24 (exact scaling)
    float a;
    std::memcpy(&a, &x, sizeof a);
    return std::uint16_t(sign | std::uint32_t(std::nearbyint(a * 0x1p24f)));  // 1024 is 2^-14, encoded right
  }
  std::uint32_t h = (((x >> 23) - 112) << 10) | ((x >> 13) & 0x3FFu);
  const std::uint32_t rest = x & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return std::uint16_t(sign | h);
}

[[noreturn]] void throw_row(size_t row, const std::string& why) {
  throw std::invalid_argument("G row " + std::to_string(row) + " " + why);
}

// Per-row bookkeeping shared by both formats: error and norm bounds of g vs w.
struct RowBounds {
  double err = 0, gn = 0, wn = 0;
  void add(float g, float w) {
    const double d = double(g) - double(w);  // exact: g and w are close floats
    err += d * d;
    gn += double(g) * g;
    wn += double(w) * w;
  }
};

struct BoundsAccumulator {
  CompressionBounds b{0.f, 0.f};
  // Row j's error bound and widened squared norm.
  void finish(const RowBounds& r, float* error, float* norm) {
    *error = round_up(std::sqrt(r.err));
    *norm = float(r.wn);
    b.max_error = std::max(b.max_error, *error);
    // |w| + error bounds |g| and any other row with these codes and this error.
    b.max_norm = std::max(b.max_norm, round_up(std::max(std::sqrt(r.gn), std::sqrt(r.wn) + double(*error))));
  }
};

void check_compress_args(const float* G, size_t ng, size_t dim, const void* codes, const float* error,
                         const float* norm) {
  if (dim == 0) throw std::invalid_argument("dim must be >= 1");
  if (ng > 0 && (!G || !codes || !error || !norm))
    throw std::invalid_argument("G, codes, error or norm is null but ng > 0");
}

// ---- The scan -----------------------------------------------------------------

// Compressed rows widened to float32 into the scorer's buffer.
struct WidenedRows {
  const TileKernels& K;
  const CompressedGallery& G;
  size_t buffer_floats(size_t rows) const { return rows * G.dim; }
  const float* rows(float* buf, size_t j0, size_t n) const {
    const size_t dim = G.dim;
    if (G.precision == Precision::fp16) {
      K.widen_f16(static_cast<const std::uint16_t*>(G.codes) + j0 * dim, n * dim, buf);
    } else {
      const auto* codes = static_cast<const std::int8_t*>(G.codes) + j0 * dim;
      for (size_t r = 0; r < n; ++r) K.widen_i8(codes + r * dim, dim, G.scale[j0 + r], buf + r * dim);
    }
    return buf;
  }
};

// A query or two (direct_rows) against the compressed rows in place: dot
// products converted in registers, the rows' stored norms, so the scan reads
// each compressed byte once and does the least arithmetic per byte. Its
// distances are the widened rows' to within the rounding slack of the bound.
struct CompressedDirectScorer {
  const TileKernels& K;
  const float *Q, *qnorms;
  const CompressedGallery& G;
  size_t nq, ng, dim;
  static constexpr size_t kPanel = 32;  // columns per block: the width of a hits mask

  static double work_per_thread() { return 1 << 20; }
  size_t granule() const { return kPanel; }
  detail::Layout layout(int) const {
    const size_t row_bytes = dim * (G.precision == Precision::fp16 ? 2 : 1);
    return {kPanel, std::max<size_t>(1, detail::kTileBytes / (kPanel * row_bytes))};
  }
  size_t query_rows() const { return nq; }
  size_t gallery_rows(const detail::Layout&) const { return kPanel; }
  struct Workspace {
    std::vector<float> dots, dist;
    std::vector<std::uint32_t> hits;
  };
  Workspace workspace(const detail::Layout&) const {
    return {std::vector<float>(nq * kPanel), std::vector<float>(nq * kPanel), std::vector<std::uint32_t>(nq)};
  }
  void load(Workspace&, size_t, size_t) const {}
  Block score(Workspace& w, size_t, size_t, size_t j0, size_t ncols, const float* bound, bool inclusive) const {
    if (G.precision == Precision::fp16)
      K.dots_f16(Q, nq, dim, static_cast<const std::uint16_t*>(G.codes) + j0 * dim, ncols, w.dots.data());
    else
      K.dots_i8(Q, nq, dim, static_cast<const std::int8_t*>(G.codes) + j0 * dim, ncols, w.dots.data());
    for (size_t i = 0; i < nq; ++i) {
      std::uint32_t hits = 0;
      for (size_t j = 0; j < ncols; ++j) {
        const float s = G.precision == Precision::int8 ? G.scale[j0 + j] : 1.f;
        const float dot = w.dots[i * ncols + j] * s;
        const float v = (qnorms[i] + G.norm[j0 + j]) - (dot + dot);
        const float d = v > 0.f ? v : 0.f;
        w.dist[i * kPanel + j] = d;
        if (bound && (inclusive ? d <= bound[i] : d < bound[i])) hits |= 1u << j;
      }
      w.hits[i] = hits;
    }
    return {w.dist.data(), kPanel, bound ? w.hits.data() : nullptr};
  }
};

// The bounds of facesdk/kernels.h on a float32 distance, from the distance d
// measured on the widened row, the row's error e and the rounding slack c.
double lower_bound(double d, double e, double c) {
  const double a = std::max(0.0, std::sqrt(std::max(0.0, d - c)) - e);
  return a * a * (1 - 1e-9) - c;
}
double upper_bound(double d, double e, double c) {
  const double a = std::sqrt(d + c) + e;
  return a * a * (1 + 1e-9) + c;
}
// A widened distance at or past this (rows of error <= e) has a lower bound past `limit`.
float widened_limit(double limit, double e, double c) {
  if (!(limit < kInf)) return std::numeric_limits<float>::infinity();
  const double a = std::sqrt(limit + c) + e;
  return round_up(a * a * (1 + 1e-6) + c);
}

// Per thread and query: the k smallest upper bounds so far (a max-heap) and
// every row whose lower bound is within the largest of them. The scan offers
// only rows below `bound` (the widened distance past which no row can qualify).
struct CandidateCollector {
  static constexpr bool inclusive = false;
  size_t nq, k;
  const float* error;
  const double* slack;  // c per query
  double max_error;
  struct Entry {
    std::int64_t row;
    double lower;
  };
  struct State {
    std::vector<std::vector<double>> upper;
    std::vector<std::vector<Entry>> rows;
    std::vector<size_t> pruned_at;
    std::vector<float> bound;
  };
  std::vector<State> states;

  void start(int threads) {
    states.assign(threads, {});
    for (State& s : states) {
      s.upper.assign(nq, {});
      s.rows.assign(nq, {});
      s.pruned_at.assign(nq, 0);
      s.bound.assign(nq, std::numeric_limits<float>::infinity());
    }
  }
  const float* bound(int t) const { return states[t].bound.data(); }
  void block(int t, size_t i0, size_t mr, size_t j0, size_t ncols, const Block& b) {
    State& s = states[t];
    for (size_t i = 0; i < mr; ++i) {
      const float* row = b.values + i * b.stride;
      detail::for_each_candidate(b.hits, i, ncols, [&](size_t j) { offer(s, i0 + i, row[j], std::int64_t(j0 + j)); });
    }
  }
  void offer(State& s, size_t q, float d, std::int64_t g) const {
    const double c = slack[q], e = error[g];
    std::vector<double>& heap = s.upper[q];
    const double up = upper_bound(d, e, c);
    if (heap.size() < k) {
      heap.push_back(up);
      std::push_heap(heap.begin(), heap.end());
    } else if (up < heap.front()) {
      std::pop_heap(heap.begin(), heap.end());
      heap.back() = up;
      std::push_heap(heap.begin(), heap.end());
    }
    const double limit = heap.size() < k ? kInf : heap.front();
    const double low = lower_bound(d, e, c);
    if (low > limit) return;
    std::vector<Entry>& rows = s.rows[q];
    rows.push_back({g, low});
    if (rows.size() > 2 * s.pruned_at[q] + 64) {  // drop rows the limit has since passed
      rows.erase(std::remove_if(rows.begin(), rows.end(), [&](const Entry& r) { return r.lower > limit; }), rows.end());
      s.pruned_at[q] = rows.size();
    }
    if (heap.size() == k) s.bound[q] = widened_limit(limit, max_error, c);
  }
  // Per query, the rows whose lower bound is within the k-th smallest upper
  // bound of all threads, ascending (threads own ascending runs of rows).
  std::vector<std::vector<std::int64_t>> collect() const {
    std::vector<std::vector<std::int64_t>> out(nq);
    std::vector<double> all;
    for (size_t q = 0; q < nq; ++q) {
      all.clear();
      for (const State& s : states) all.insert(all.end(), s.upper[q].begin(), s.upper[q].end());
      double limit = kInf;
      if (all.size() >= k) {
        std::nth_element(all.begin(), all.begin() + (k - 1), all.end());
        limit = all[k - 1];
      }
      for (const State& s : states)
        for (const Entry& r : s.rows[q])
          if (r.lower <= limit) out[q].push_back(r.row);
    }
    return out;
  }
};

// Checks everything and returns the query norms and each query's rounding slack.
struct Prepared {
  const TileKernels& K;
  std::vector<float> qnorms;
  std::vector<double> slack;
  double max_slack = 0;
};

Prepared prepare(const float* Q, size_t nq, const CompressedGallery& G, const ExactRows& exact_rows) {
  if (G.dim == 0) throw std::invalid_argument("dim must be >= 1");
  if (nq > 0 && !Q) throw std::invalid_argument("Q is null but nq > 0");
  if (nq > std::numeric_limits<std::uint32_t>::max()) throw std::invalid_argument("Q has more than 2^32 - 1 rows");
  if (G.ng > 0 && (!G.codes || !G.error || !G.norm || (G.precision == Precision::int8 && !G.scale)))
    throw std::invalid_argument("the compressed gallery's codes, error, norm or scale is null but ng > 0");
  if (!exact_rows) throw std::invalid_argument("exact_rows is empty");
  if (!(G.max_error >= 0) || !(G.max_norm >= 0) || !std::isfinite(G.max_error) || !std::isfinite(G.max_norm))
    throw std::invalid_argument("max_error and max_norm must be finite and >= 0");
  const TileKernels& K = detail::active_kernels();
  Prepared p{K, detail::checked_norms(K, Q, nq, G.dim, "Q"), std::vector<double>(nq)};
  const double gamma = (2.0 * double(G.dim) + 16) * 0x1p-24 * (1 + 1e-6);
  for (size_t i = 0; i < nq; ++i) {
    const double r = std::sqrt(double(p.qnorms[i])) * (1 + 1e-6) + G.max_norm;
    p.slack[i] = gamma * r * r;
    p.max_slack = std::max(p.max_slack, p.slack[i]);
  }
  return p;
}

template <class Collector>
void scan(const Prepared& p, const float* Q, size_t nq, const CompressedGallery& G, Collector& out) {
  if (nq <= p.K.direct_rows)
    detail::scan(CompressedDirectScorer{p.K, Q, p.qnorms.data(), G, nq, G.ng, G.dim}, out);
  else
    detail::scan(detail::L2Scorer<WidenedRows>{p.K, Q, p.qnorms.data(), {p.K, G}, nq, G.ng, G.dim}, out);
}

// The float32 rows of the candidates, fetched once for all queries: the
// distinct rows ascending, and per query each candidate's place among them.
struct Fetched {
  std::vector<std::int64_t> rows;
  std::vector<float> values;
  std::vector<std::vector<size_t>> at;
};

Fetched fetch(const std::vector<std::vector<std::int64_t>>& candidates, size_t dim, const ExactRows& exact_rows) {
  Fetched f;
  for (const auto& c : candidates) f.rows.insert(f.rows.end(), c.begin(), c.end());
  std::sort(f.rows.begin(), f.rows.end());
  f.rows.erase(std::unique(f.rows.begin(), f.rows.end()), f.rows.end());
  f.values.resize(f.rows.size() * dim);
  if (!f.rows.empty()) exact_rows(f.rows.data(), f.rows.size(), f.values.data());
  f.at.resize(candidates.size());
  for (size_t q = 0; q < candidates.size(); ++q)
    for (std::int64_t r : candidates[q])
      f.at[q].push_back(size_t(std::lower_bound(f.rows.begin(), f.rows.end(), r) - f.rows.begin()));
  return f;
}

// Float32 distances of query i to its fetched candidates, by the path the
// float32 call takes for a batch of nq queries: bit-identical to it.
std::vector<float> exact_distances(const Prepared& p, const float* Q, size_t nq, size_t i, const Fetched& f,
                                   size_t dim) {
  const TileKernels& K = p.K;
  const size_t NR = K.panel_width, n = f.at[i].size();
  const bool direct = nq <= K.direct_rows;
  std::vector<float> rows(NR * dim), panel(NR * dim), gnorms(NR), dist(K.block_rows * NR), out(n);
  std::vector<std::uint32_t> hits(K.block_rows);
  const float* q = Q + i * dim;
  for (size_t c0 = 0; c0 < n; c0 += NR) {
    const size_t cnt = std::min(NR, n - c0);
    for (size_t r = 0; r < cnt; ++r)
      std::memcpy(rows.data() + r * dim, f.values.data() + f.at[i][c0 + r] * dim, dim * sizeof(float));
    if (direct) {
      K.direct(q, 1, dim, p.qnorms.data() + i, rows.data(), cnt, nullptr, false, dist.data(), hits.data(),
               gnorms.data());
    } else {
      K.pack(rows.data(), cnt, dim, panel.data(), gnorms.data());
      K.distances(q, 1, dim, p.qnorms.data() + i, panel.data(), gnorms.data(), nullptr, false, dist.data(),
                  hits.data());
    }
    for (size_t r = 0; r < cnt; ++r)
      if (!std::isfinite(gnorms[r])) detail::throw_not_finite("exact_rows", size_t(f.rows[f.at[i][c0 + r]]));
    std::copy(dist.begin(), dist.begin() + cnt, out.begin() + c0);
  }
  return out;
}

}  // namespace

CompressionBounds compress_fp16(const float* G, size_t ng, size_t dim, std::uint16_t* codes, float* error,
                                float* norm) {
  check_compress_args(G, ng, dim, codes, error, norm);
  BoundsAccumulator acc;
  for (size_t j = 0; j < ng; ++j) {
    RowBounds r;
    for (size_t d = 0; d < dim; ++d) {
      const float g = G[j * dim + d];
      if (!(std::fabs(g) <= 65504.f)) throw_row(j, "holds NaN, Inf or a value beyond fp16's range (65504)");
      const std::uint16_t h = float_to_half(g);
      codes[j * dim + d] = h;
      r.add(g, detail::half_to_float(h));
    }
    acc.finish(r, error + j, norm + j);
  }
  return acc.b;
}

CompressionBounds compress_int8(const float* G, size_t ng, size_t dim, std::int8_t* codes, float* scale,
                                float* error, float* norm) {
  check_compress_args(G, ng, dim, codes, error, norm);
  if (ng > 0 && !scale) throw std::invalid_argument("scale is null but ng > 0");
  BoundsAccumulator acc;
  for (size_t j = 0; j < ng; ++j) {
    const float* g = G + j * dim;
    float top = 0.f;
    for (size_t d = 0; d < dim; ++d) {
      if (!std::isfinite(g[d])) throw_row(j, "holds NaN or Inf");
      top = std::max(top, std::fabs(g[d]));
    }
    const float s = top / 127.f;
    scale[j] = s;
    RowBounds r;
    for (size_t d = 0; d < dim; ++d) {
      const float c = s > 0.f ? std::min(127.f, std::max(-127.f, std::nearbyint(g[d] / s))) : 0.f;
      codes[j * dim + d] = std::int8_t(c);
      r.add(g[d], c * s);  // the widening's one multiply
    }
    acc.finish(r, error + j, norm + j);
  }
  return acc.b;
}

void topk(const float* Q, size_t nq, const CompressedGallery& G, const ExactRows& exact_rows, size_t k,
          std::int64_t* idx, float* dist) {
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  if (nq > 0 && (!idx || !dist)) throw std::invalid_argument("idx or dist is null");
  const Prepared p = prepare(Q, nq, G, exact_rows);
  if (nq == 0) return;
  std::vector<std::vector<std::int64_t>> candidates(nq);
  if (G.ng > 0) {
    CandidateCollector sink{nq, std::min(k, G.ng), G.error, p.slack.data(), G.max_error, {}};
    scan(p, Q, nq, G, sink);
    candidates = sink.collect();
  }
  const Fetched f = fetch(candidates, G.dim, exact_rows);
  std::vector<std::pair<float, std::int64_t>> ranked;
  for (size_t i = 0; i < nq; ++i) {
    const std::vector<float> d = exact_distances(p, Q, nq, i, f, G.dim);
    ranked.clear();
    for (size_t c = 0; c < d.size(); ++c)
      if (detail::LowerIsBetter::admits(d[c])) ranked.emplace_back(d[c], candidates[i][c]);
    std::sort(ranked.begin(), ranked.end());  // by distance, then the lower row: the float32 ties
    for (size_t r = 0; r < k; ++r) {
      const bool have = r < ranked.size();
      idx[i * k + r] = have ? ranked[r].second : -1;
      dist[i * k + r] = have ? ranked[r].first : detail::LowerIsBetter::worst;
    }
  }
}

Matches match(const float* Q, size_t nq, const CompressedGallery& G, const ExactRows& exact_rows, float threshold) {
  if (std::isnan(threshold) || threshold < 0)
    throw std::invalid_argument("threshold must be a non-negative number, got " + std::to_string(threshold));
  const Prepared p = prepare(Q, nq, G, exact_rows);
  Matches m;
  if (nq == 0 || G.ng == 0) return m;
  detail::MatchCollector<detail::LowerIsBetter> sink(nq, widened_limit(threshold, G.max_error, p.max_slack));
  scan(p, Q, nq, G, sink);
  std::vector<std::int64_t> query, gallery;
  std::vector<float> widened;
  sink.collect(query, gallery, widened);
  std::vector<std::vector<std::int64_t>> candidates(nq);
  for (size_t r = 0; r < query.size(); ++r)
    if (lower_bound(widened[r], G.error[gallery[r]], p.slack[query[r]]) <= threshold)
      candidates[query[r]].push_back(gallery[r]);
  const Fetched f = fetch(candidates, G.dim, exact_rows);
  for (size_t i = 0; i < nq; ++i) {
    const std::vector<float> d = exact_distances(p, Q, nq, i, f, G.dim);
    for (size_t c = 0; c < d.size(); ++c)
      if (d[c] <= threshold) {
        m.query.push_back(std::int64_t(i));
        m.gallery.push_back(candidates[i][c]);
        m.distance.push_back(d[c]);
      }
  }
  return m;
}

}  // namespace facesdk
