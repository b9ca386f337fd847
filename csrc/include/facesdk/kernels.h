// facesdk kernels: batched squared-L2 distances, threshold matching and top-k.
//
// A flat array-in/array-out C++ API (no Python), for firmware that links the
// library directly. Embeddings are float32, row-major, `dim` values per row.
// Every call checks its arguments and throws std::invalid_argument with a
// message naming the offending argument. Calls are thread-safe and use
// OpenMP threads on large inputs.
//
// Distances are computed as |q|^2 + |g|^2 - 2 q.g (clamped at 0) with the
// norms and dot products accumulated in the same fixed order everywhere, so a
// pair's distance is bit-identical across sq_l2, match and topk, for any batch
// size and any number of threads (on one instruction set).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace facesdk {

// out[i * ng + j] = |Q_i - G_j|^2. `out` holds nq * ng floats.
void sq_l2(const float* Q, std::size_t nq, const float* G, std::size_t ng,
           std::size_t dim, float* out);

// Every pair with squared L2 distance <= threshold, sorted by (query, gallery).
// Never materialises the nq x ng matrix: extra memory is O(tile + matches).
struct Matches {
  std::vector<std::int64_t> query;
  std::vector<std::int64_t> gallery;
  std::vector<float> distance;
};
Matches match(const float* Q, std::size_t nq, const float* G, std::size_t ng,
              std::size_t dim, float threshold);

// The k nearest gallery rows of every query, nearest first, ties broken by the
// lower gallery index. idx and dist hold nq * k values; when k > ng the missing
// neighbours are idx = -1, dist = +inf.
void topk(const float* Q, std::size_t nq, const float* G, std::size_t ng,
          std::size_t dim, std::size_t k, std::int64_t* idx, float* dist);

// Instruction set of the distance kernels: "avx512", "avx2" or "generic",
// chosen at load time as the best the CPU supports (the environment variable
// FACESDK_ISA overrides it). set_isa throws for a name this CPU cannot run.
std::string isa();
std::vector<std::string> available_isas();
void set_isa(const std::string& name);

}  // namespace facesdk
