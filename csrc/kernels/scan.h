// Internal: the one scan behind every call of facesdk/kernels.h.
//
// A scorer (squared L2 in distance.cpp, MLS in mls.cpp) turns a block of
// queries and a block of gallery rows into values; a collector keeps all of
// them (the matrix), those within a threshold (match) or the best k per query
// (top-k). The scan owns the threading: the gallery is cut into one contiguous
// run per thread, each thread loads (packs or validates) a cache-sized tile of
// its run and sweeps every query over it while it is hot. Which values are
// better is the collector's Order: L2 distances are better lower, MLS scores
// higher.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace facesdk::detail {

// Bytes of gallery a thread keeps hot while it sweeps all queries.
inline constexpr std::size_t kTileBytes = 256 * 1024;

// The gallery is cut into units of unit_rows rows, one contiguous run of units
// per thread, loaded `step` units at a time.
struct Layout {
  std::size_t unit_rows, step;
};

// What a scorer hands the collector: values[i * stride + j] for query i0 + i
// and gallery row j0 + j. hits, when not null, has bit j of hits[i] set for
// every value the collector can keep (a superset: the collector decides);
// null means every value is a candidate.
struct Block {
  const float* values;
  std::size_t stride;
  const std::uint32_t* hits;
};

// Scorer: nq, ng, dim; work_per_thread() (pairs x dim below which one thread
// is faster than waking a team); granule() (fewest gallery rows worth a
// thread); layout(threads); query_rows() and gallery_rows(layout) (the block
// sizes of one score call); workspace(layout) (per-thread buffers); load(ws,
// j0, j1) (prepare gallery rows [j0, j1)) and score(ws, i0, mr, j0, ncols,
// bound, inclusive) -> Block, with j0 within the loaded rows.
//
// Collector: inclusive, start(threads), bound(thread) (per-query limits a
// scorer may use to set hits, null for none: hit where value < bound, <= when
// inclusive) and block(thread, i0, mr, j0, ncols, block).
template <class Scorer, class Collector>
void scan(const Scorer& S, Collector& out) {
  const std::size_t nq = S.nq, ng = S.ng;
  int threads = 1;
#ifdef _OPENMP
  const double work = double(nq) * double(ng) * double(S.dim);
  const double granules = double((ng + S.granule() - 1) / S.granule());
  threads = int(std::max(1.0, std::min({double(omp_get_max_threads()), work / S.work_per_thread(), granules})));
#endif
  const Layout L = S.layout(threads);
  const std::size_t units = (ng + L.unit_rows - 1) / L.unit_rows;
  const std::size_t QB = S.query_rows(), GB = S.gallery_rows(L);
  out.start(threads);
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
    const std::size_t u_end = units * (t + 1) / threads;
    auto ws = S.workspace(L);
    const float* bound = out.bound(t);
    for (std::size_t u = units * t / threads; u < u_end && !stop.load(std::memory_order_relaxed); u += L.step) {
      const std::size_t j_begin = u * L.unit_rows, j_end = std::min(ng, std::min(u + L.step, u_end) * L.unit_rows);
      S.load(ws, j_begin, j_end);
      for (std::size_t i0 = 0; i0 < nq; i0 += QB) {
        const std::size_t mr = std::min(QB, nq - i0);
        for (std::size_t j0 = j_begin; j0 < j_end; j0 += GB) {
          const std::size_t ncols = std::min(GB, j_end - j0);
          const Block b = S.score(ws, i0, mr, j0, ncols, bound ? bound + i0 : nullptr, Collector::inclusive);
          out.block(t, i0, mr, j0, ncols, b);
        }
      }
    }
  } catch (...) {
#pragma omp critical(facesdk_scan_error)
    if (!error) error = std::current_exception();
    stop = true;
  }
  if (error) std::rethrow_exception(error);
}

// ---- Orders ----------------------------------------------------------------

struct LowerIsBetter {  // squared L2 distances
  static bool better(float a, float b) { return a < b; }
  static bool within(float v, float threshold) { return v <= threshold; }
  static constexpr float worst = std::numeric_limits<float>::infinity();  // top-k padding
  // A distance that overflowed to +inf (or NaN) takes no top-k slot.
  static bool admits(float v) { return v < worst; }
};

struct HigherIsBetter {  // mutual likelihood scores
  static bool better(float a, float b) { return a > b; }
  static bool within(float v, float threshold) { return v >= threshold; }
  static constexpr float worst = -std::numeric_limits<float>::infinity();
  // Every score, -inf included, is a real entry (never NaN).
  static bool admits(float) { return true; }
};

// ---- Collectors ------------------------------------------------------------

// Calls f(j) for every candidate column j < ncols of row i (every column when
// hits is null).
template <class F>
inline void for_each_candidate(const std::uint32_t* hits, std::size_t i, std::size_t ncols, F&& f) {
  if (hits) {
    std::uint32_t m = hits[i];
    if (ncols < 32) m &= (1u << ncols) - 1u;  // a partial panel's valid columns
    for (; m; m &= m - 1) f(std::size_t(__builtin_ctz(m)));
  } else {
    for (std::size_t j = 0; j < ncols; ++j) f(j);
  }
}

// Every value into out[i * ng + j].
struct MatrixCollector {
  static constexpr bool inclusive = false;
  float* out;
  std::size_t ng;
  void start(int) {}
  const float* bound(int) const { return nullptr; }
  void block(int, std::size_t i0, std::size_t mr, std::size_t j0, std::size_t ncols, const Block& b) {
    for (std::size_t i = 0; i < mr; ++i)
      std::memcpy(out + (i0 + i) * ng + j0, b.values + i * b.stride, ncols * sizeof(float));
  }
};

// Every pair within the threshold, per thread in (query, gallery) order for
// each query.
template <class Order>
struct MatchCollector {
  static constexpr bool inclusive = true;
  struct Hit {
    std::int64_t gallery;
    std::uint32_t query;
    float value;
  };
  std::size_t nq;
  float threshold;
  std::vector<float> bounds;
  std::vector<std::vector<Hit>> hits;
  MatchCollector(std::size_t queries, float limit) : nq(queries), threshold(limit) {}
  void start(int threads) {
    bounds.assign(nq, threshold);
    hits.assign(threads, {});
  }
  const float* bound(int) const { return bounds.data(); }
  void block(int t, std::size_t i0, std::size_t mr, std::size_t j0, std::size_t ncols, const Block& b) {
    // Locals, not members: push_back could alias them and force reloads.
    std::vector<Hit>& out = hits[t];
    const float limit = threshold;
    for (std::size_t i = 0; i < mr; ++i) {
      const float* row = b.values + i * b.stride;
      const auto q = std::uint32_t(i0 + i);
      for_each_candidate(b.hits, i, ncols, [&](std::size_t j) {
        if (!Order::within(row[j], limit)) return;
        // Field by field: GCC builds a braced Hit on the stack and copies it
        // with one 16-byte load, which stalls on store forwarding.
        Hit& h = out.emplace_back();
        h.gallery = std::int64_t(j0 + j);
        h.query = q;
        h.value = row[j];
      });
    }
  }
  // Counting sort by query; within a query, threads and tiles already ascend.
  void collect(std::vector<std::int64_t>& query, std::vector<std::int64_t>& gallery,
               std::vector<float>& value) const {
    std::vector<std::size_t> at(nq + 1, 0);
    for (const auto& th : hits)
      for (const Hit& h : th) ++at[h.query + 1];
    for (std::size_t i = 0; i < nq; ++i) at[i + 1] += at[i];
    query.resize(at[nq]);
    gallery.resize(at[nq]);
    value.resize(at[nq]);
    for (const auto& th : hits)
      for (const Hit& h : th) {
        const std::size_t r = at[h.query]++;
        query[r] = h.query;
        gallery[r] = h.gallery;
        value[r] = h.value;
      }
  }
};

// Per thread and query, the best k so far, best first. Gallery rows arrive in
// ascending order, so a newcomer goes after equal values and only a strictly
// better one displaces a full list's last entry; bound[q] is that last entry
// once the list is full.
template <class Order>
struct TopkCollector {
  static constexpr bool inclusive = false;
  std::size_t nq, k;
  struct State {
    std::vector<float> value, bound;
    std::vector<std::int64_t> idx;
    std::vector<std::size_t> count;
  };
  std::vector<State> states;
  // A thread's list never needs more than ng entries; the rest is padding.
  TopkCollector(std::size_t queries, std::size_t wanted, std::size_t ng)
      : nq(queries), k(std::max<std::size_t>(1, std::min(wanted, ng))) {}
  void start(int threads) {
    states.assign(threads, {});
    for (State& s : states) {
      s.value.resize(nq * k);
      s.idx.resize(nq * k);
      s.bound.assign(nq, Order::worst);
      s.count.assign(nq, 0);
    }
  }
  const float* bound(int t) const { return states[t].bound.data(); }
  void block(int t, std::size_t i0, std::size_t mr, std::size_t j0, std::size_t ncols, const Block& b) {
    State& s = states[t];
    for (std::size_t i = 0; i < mr; ++i) {
      const float* row = b.values + i * b.stride;
      for_each_candidate(b.hits, i, ncols, [&](std::size_t j) { insert(s, i0 + i, row[j], std::int64_t(j0 + j)); });
    }
  }
  void insert(State& s, std::size_t q, float v, std::int64_t g) const {
    std::size_t& count = s.count[q];
    if (count == k ? !Order::better(v, s.bound[q]) : !Order::admits(v)) return;
    float* value = s.value.data() + q * k;
    std::int64_t* idx = s.idx.data() + q * k;
    std::size_t pos = count < k ? count++ : k - 1;
    for (; pos > 0 && Order::better(v, value[pos - 1]); --pos) {
      value[pos] = value[pos - 1];
      idx[pos] = idx[pos - 1];
    }
    value[pos] = v;
    idx[pos] = g;
    if (count == k) s.bound[q] = value[k - 1];
  }
  // Merges the threads' lists into out_k entries per query, padded with -1 and
  // Order::worst; a stable sort keeps lower chunks (indices) first on ties.
  void collect(std::size_t out_k, std::int64_t* idx_out, float* value_out) const {
    std::vector<std::pair<float, std::int64_t>> cand;
    for (std::size_t q = 0; q < nq; ++q) {
      cand.clear();
      for (const State& s : states)
        for (std::size_t r = 0; r < s.count[q]; ++r) cand.emplace_back(s.value[q * k + r], s.idx[q * k + r]);
      std::stable_sort(cand.begin(), cand.end(),
                       [](const auto& a, const auto& b) { return Order::better(a.first, b.first); });
      for (std::size_t r = 0; r < out_k; ++r) {
        const bool have = r < k && r < cand.size();
        idx_out[q * out_k + r] = have ? cand[r].second : -1;
        value_out[q * out_k + r] = have ? cand[r].first : Order::worst;
      }
    }
  }
};

}  // namespace facesdk::detail
