// Argument checks, threading and the selection of matches / top-k around the
// per-instruction-set micro-kernels of tile.h.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>
#include <string>
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

bool cpu_supports(const TileKernels* k) {
  if (!k) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const std::string name = k->name;
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx512") return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#endif
  return std::string(k->name) == "generic";
}

std::vector<const TileKernels*> supported_kernels() {  // best first
  std::vector<const TileKernels*> out;
  for (const TileKernels* k : {detail::avx512_kernels(), detail::avx2_kernels(), detail::generic_kernels()})
    if (cpu_supports(k)) out.push_back(k);
  return out;
}

const TileKernels* find_kernels(const std::string& name) {
  for (const TileKernels* k : supported_kernels())
    if (name == k->name) return k;
  return nullptr;
}

const TileKernels* initial_kernels() {
  if (const char* env = std::getenv("FACESDK_ISA"); env && *env) {
    if (const TileKernels* k = find_kernels(env)) return k;
  }
  return supported_kernels().front();
}

std::atomic<const TileKernels*> g_kernels{initial_kernels()};

// Pairs x dim below which one thread is faster than waking a team.
constexpr double kWorkPerThread = 1 << 20;
// Bytes of packed gallery a thread keeps hot while it sweeps all queries.
constexpr size_t kTileBytes = 256 * 1024;

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

std::vector<float> checked_norms(const TileKernels& K, const float* X, size_t rows, size_t dim,
                                 const char* name) {
  std::vector<float> norms(rows);
  K.norms(X, rows, dim, norms.data());
  for (size_t r = 0; r < rows; ++r)
    if (!std::isfinite(norms[r])) throw_not_finite(name, r);
  return norms;
}

// Visits every (query block, gallery panel) pair. The gallery is split into one
// contiguous chunk of panels per thread; each thread packs its chunk a tile at
// a time and sweeps all queries over the tile while it is hot in cache.
// The sink is called as sink.block(thread, i0, mr, j0, ncols, dist, hits) with
// dist[i * panel_width + j]; its bound(thread) (null for none) and inclusive
// decide which distances set a bit in hits.
template <class Sink>
void scan(const TileKernels& K, const float* Q, size_t nq, const float* qnorms, const float* G,
          size_t ng, size_t dim, Sink& sink) {
  const size_t NR = K.panel_width, MR = K.block_rows;
  const bool direct = nq <= K.direct_rows;
  const size_t panels = (ng + NR - 1) / NR;
  const double work = double(nq) * double(ng) * double(dim);
  int threads = 1;
#ifdef _OPENMP
  threads = int(std::max(1.0, std::min({double(omp_get_max_threads()), work / kWorkPerThread,
                                        double(panels)})));
#endif
  sink.start(threads);
  const size_t tile_panels = std::max<size_t>(1, kTileBytes / (NR * dim * sizeof(float)));
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
    const size_t p_begin = panels * t / threads, p_end = panels * (t + 1) / threads;
    std::vector<float> packed(direct ? 0 : tile_panels * NR * dim), gnorms(tile_panels * NR), dist(MR * NR);
    std::vector<std::uint32_t> hits(MR);
    const float* bound = sink.bound(t);
    auto check_norms = [](const float* gn, size_t j0, size_t rows) {
      for (size_t r = 0; r < rows; ++r)
        if (!std::isfinite(gn[r])) throw_not_finite("G", j0 + r);
    };
    for (size_t p0 = p_begin; p0 < p_end && !stop.load(std::memory_order_relaxed); p0 += tile_panels) {
      const size_t np = std::min(tile_panels, p_end - p0);
      if (direct) {  // few queries: straight from the gallery, no packing
        for (size_t p = p0; p < p0 + np; ++p) {
          const size_t j0 = p * NR, rows = std::min(NR, ng - j0);
          K.direct(Q, nq, dim, qnorms, G + j0 * dim, rows, bound, Sink::inclusive, dist.data(),
                   hits.data(), gnorms.data());
          check_norms(gnorms.data(), j0, rows);
          sink.block(t, 0, nq, j0, rows, NR, dist.data(), hits.data());
        }
        continue;
      }
      for (size_t p = 0; p < np; ++p) {
        const size_t j0 = (p0 + p) * NR, rows = std::min(NR, ng - j0);
        K.pack(G + j0 * dim, rows, dim, packed.data() + p * NR * dim, gnorms.data() + p * NR);
        check_norms(gnorms.data() + p * NR, j0, rows);
      }
      for (size_t i0 = 0; i0 < nq; i0 += MR) {
        const size_t mr = std::min(MR, nq - i0);
        for (size_t p = 0; p < np; ++p) {
          const size_t j0 = (p0 + p) * NR;
          K.distances(Q + i0 * dim, mr, dim, qnorms + i0, packed.data() + p * NR * dim,
                      gnorms.data() + p * NR, bound ? bound + i0 : nullptr, Sink::inclusive,
                      dist.data(), hits.data());
          sink.block(t, i0, mr, j0, std::min(NR, ng - j0), NR, dist.data(), hits.data());
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

// sq_l2: copies every block into the full matrix.
struct MatrixSink {
  static constexpr bool inclusive = false;
  float* out;
  size_t ng;
  void start(int) {}
  const float* bound(int) const { return nullptr; }
  void block(int, size_t i0, size_t mr, size_t j0, size_t ncols, size_t NR, const float* dist,
             const std::uint32_t*) {
    for (size_t i = 0; i < mr; ++i)
      std::memcpy(out + (i0 + i) * ng + j0, dist + i * NR, ncols * sizeof(float));
  }
};

// Lowers a mask to the valid columns of a possibly partial panel.
inline std::uint32_t valid_columns(std::uint32_t mask, size_t ncols) {
  return ncols >= 32 ? mask : mask & ((1u << ncols) - 1u);
}

// match: every hit at or below the threshold, per thread in (query, gallery)
// order for each query.
struct MatchSink {
  static constexpr bool inclusive = true;
  struct Hit {
    std::int64_t gallery;
    std::uint32_t query;
    float distance;
  };
  size_t nq;
  float threshold;
  std::vector<float> bounds;
  std::vector<std::vector<Hit>> hits;
  void start(int threads) {
    bounds.assign(nq, threshold);
    hits.assign(threads, {});
  }
  const float* bound(int) const { return bounds.data(); }
  void block(int t, size_t i0, size_t mr, size_t j0, size_t ncols, size_t NR, const float* dist,
             const std::uint32_t* mask) {
    for (size_t i = 0; i < mr; ++i)
      for (std::uint32_t m = valid_columns(mask[i], ncols); m; m &= m - 1) {
        const unsigned j = __builtin_ctz(m);
        hits[t].push_back({std::int64_t(j0 + j), std::uint32_t(i0 + i), dist[i * NR + j]});
      }
  }
  // Counting sort by query; within a query, threads and tiles already ascend.
  Matches collect() const {
    std::vector<size_t> start(nq + 1, 0);
    for (const auto& th : hits)
      for (const Hit& h : th) ++start[h.query + 1];
    for (size_t i = 0; i < nq; ++i) start[i + 1] += start[i];
    Matches m;
    m.query.resize(start[nq]);
    m.gallery.resize(start[nq]);
    m.distance.resize(start[nq]);
    for (const auto& th : hits)
      for (const Hit& h : th) {
        const size_t at = start[h.query]++;
        m.query[at] = h.query;
        m.gallery[at] = h.gallery;
        m.distance[at] = h.distance;
      }
    return m;
  }
};

// topk: per thread, a sorted list of the best k per query; bound[i] is the
// k-th distance once the list is full, so only strictly better pairs hit.
struct TopkSink {
  static constexpr bool inclusive = false;
  size_t nq, k;
  struct State {
    std::vector<float> dist, bound;
    std::vector<std::int64_t> idx;
    std::vector<size_t> count;
  };
  std::vector<State> states;
  void start(int threads) {
    states.assign(threads, {});
    for (State& s : states) {
      s.dist.assign(nq * k, std::numeric_limits<float>::infinity());
      s.bound.assign(nq, std::numeric_limits<float>::infinity());
      s.idx.assign(nq * k, -1);
      s.count.assign(nq, 0);
    }
  }
  const float* bound(int t) const { return states[t].bound.data(); }
  void block(int t, size_t i0, size_t mr, size_t j0, size_t ncols, size_t NR, const float* dist,
             const std::uint32_t* mask) {
    State& s = states[t];
    for (size_t i = 0; i < mr; ++i)
      for (std::uint32_t m = valid_columns(mask[i], ncols); m; m &= m - 1) {
        const unsigned j = __builtin_ctz(m);
        insert(s, i0 + i, dist[i * NR + j], std::int64_t(j0 + j));
      }
  }
  // Gallery indices arrive in ascending order, so a new pair goes after equals.
  void insert(State& s, size_t q, float d, std::int64_t g) const {
    if (!(d < s.bound[q])) return;
    float* dist = s.dist.data() + q * k;
    std::int64_t* idx = s.idx.data() + q * k;
    size_t& count = s.count[q];
    size_t pos = count < k ? count : k - 1;  // a full list drops its last entry
    while (pos > 0 && dist[pos - 1] > d) {
      dist[pos] = dist[pos - 1];
      idx[pos] = idx[pos - 1];
      --pos;
    }
    dist[pos] = d;
    idx[pos] = g;
    if (count < k) ++count;
    if (count == k) s.bound[q] = dist[k - 1];
  }
  // Merges the threads' lists; a stable sort keeps lower chunks (indices) first on ties.
  void collect(std::int64_t* idx_out, float* dist_out) const {
    std::vector<std::pair<float, std::int64_t>> cand;
    for (size_t q = 0; q < nq; ++q) {
      cand.clear();
      for (const State& s : states)
        for (size_t r = 0; r < s.count[q]; ++r) cand.emplace_back(s.dist[q * k + r], s.idx[q * k + r]);
      std::stable_sort(cand.begin(), cand.end(),
                       [](const auto& a, const auto& b) { return a.first < b.first; });
      for (size_t r = 0; r < k; ++r) {
        const bool have = r < cand.size();
        idx_out[q * k + r] = have ? cand[r].second : -1;
        dist_out[q * k + r] = have ? cand[r].first : std::numeric_limits<float>::infinity();
      }
    }
  }
};

}  // namespace

void sq_l2(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, float* out) {
  check_inputs(Q, nq, G, ng, dim);
  if (nq * ng > 0 && !out) throw std::invalid_argument("out is null");
  const TileKernels& K = *g_kernels.load();
  const std::vector<float> qn = checked_norms(K, Q, nq, dim, "Q");
  if (nq == 0) {
    checked_norms(K, G, ng, dim, "G");
    return;
  }
  MatrixSink sink{out, ng};
  scan(K, Q, nq, qn.data(), G, ng, dim, sink);
}

Matches match(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, float threshold) {
  check_inputs(Q, nq, G, ng, dim);
  if (std::isnan(threshold) || threshold < 0)
    throw std::invalid_argument("threshold must be a non-negative number, got " + std::to_string(threshold));
  const TileKernels& K = *g_kernels.load();
  const std::vector<float> qn = checked_norms(K, Q, nq, dim, "Q");
  if (nq == 0) {
    checked_norms(K, G, ng, dim, "G");
    return {};
  }
  MatchSink sink{nq, threshold, {}, {}};
  scan(K, Q, nq, qn.data(), G, ng, dim, sink);
  return sink.collect();
}

void topk(const float* Q, size_t nq, const float* G, size_t ng, size_t dim, size_t k,
          std::int64_t* idx, float* dist) {
  check_inputs(Q, nq, G, ng, dim);
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  if (nq > 0 && (!idx || !dist)) throw std::invalid_argument("idx or dist is null");
  const TileKernels& K = *g_kernels.load();
  const std::vector<float> qn = checked_norms(K, Q, nq, dim, "Q");
  if (nq == 0) {
    checked_norms(K, G, ng, dim, "G");
    return;
  }
  TopkSink sink{nq, k, {}};
  scan(K, Q, nq, qn.data(), G, ng, dim, sink);
  sink.collect(idx, dist);
}

const TileKernels& detail::active_kernels() { return *g_kernels.load(); }

std::string isa() { return g_kernels.load()->name; }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const TileKernels* k : supported_kernels()) names.emplace_back(k->name);
  return names;
}

void set_isa(const std::string& name) {
  const TileKernels* k = find_kernels(name);
  if (!k) throw std::invalid_argument("instruction set '" + name + "' is not available on this CPU");
  g_kernels.store(k);
}

}  // namespace facesdk
