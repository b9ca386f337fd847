// FaceNet's online triplet mining: the rule, shared by the CPU and the CUDA kernels.
//
// This header includes no torch and no CUDA header: the CPU kernel (mining_cpu.cpp), the CUDA
// kernel (mining_cuda.cu, nvcc) and the torch glue all include it, so the rule below is written
// once and both devices compute the same bits.
//
// For embeddings x [B, D] (float32), labels [B] (int64) and a margin alpha:
//   d(i, j)   squared L2 in float64, summed over k = 0..D-1 in order, (x_ik - x_jk)^2 each,
//             without fused multiply-add (so CPU, CUDA and the torch reference agree bit for bit).
//   pairs     every anchor-positive pair (a, p): a != p, labels[a] == labels[p], ordered by (a, p).
//   negatives n with labels[n] != labels[a].
//   semihard  d(a,p) < d(a,n) < d(a,p) + alpha; one per pair, drawn uniformly among the pair's
//             semi-hard negatives (the k-th in index order, k = pair_random(seed, a, p) mod count).
//             No semi-hard negative: Fallback (none: skip the pair; easy: the closest negative
//             with d(a,n) > d(a,p); hardest: the closest negative).
//   hardest   the closest negative of the anchor, for every pair.
//   batch_all every (a, p, n) with d(a,n) < d(a,p) + alpha (positive loss), ordered by (a, p, n).
//   Ties between equal distances go to the lower index. Output order: (a, p, n) ascending.
//   Cap: if more than max_triplets triplets qualify (N of them), a systematic sample of exactly
//   max_triplets is returned: ranks floor((i * N + s) / max_triplets), i = 0..max_triplets-1,
//   s = sample_offset(seed, N) in [0, N), so the kept triplets are evenly spread over the list.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FACESDK_HD __host__ __device__ __forceinline__
#else
#define FACESDK_HD inline
#endif

// cudaStream_t without cuda_runtime.h (the same typedef as driver_types.h; repeating it is legal).
typedef struct CUstream_st* cudaStream_t;

namespace facesdk {
namespace mining {

enum class Mode : int32_t { kSemihard = 0, kHardest = 1, kBatchAll = 2 };
enum class Fallback : int32_t { kNone = 0, kEasy = 1, kHardest = 2 };

// Everything a kernel needs besides the arrays (plain data: passed by value to CUDA kernels).
struct Params {
  int64_t batch = 0;         // B
  int64_t dim = 0;           // D
  double margin = 0.2;       // alpha, on squared L2
  Mode mode = Mode::kSemihard;
  Fallback fallback = Fallback::kNone;
  uint64_t seed = 0;
  int64_t max_triplets = 0;  // the cap, >= 1
};

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kSampleSalt = 0xD1B54A32D192ED03ull;

// SplitMix64's finaliser: a counter-based generator, the same number on any thread or device.
FACESDK_HD uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The random number of anchor-positive pair (a, p) under a seed.
FACESDK_HD uint64_t pair_random(uint64_t seed, int64_t a, int64_t p) {
  const uint64_t key = (static_cast<uint64_t>(a) << 32) | static_cast<uint64_t>(p);
  return mix64(mix64(seed + kGolden) ^ key);
}

// s in [0, total): where the systematic sample of a capped output starts (its first kept rank
// is floor(s / cap), somewhere in the first total / cap triplets).
FACESDK_HD int64_t sample_offset(uint64_t seed, int64_t total) {
  return static_cast<int64_t>(mix64(mix64(seed + kGolden) ^ kSampleSalt) % static_cast<uint64_t>(total));
}

__extension__ typedef __int128 Int128;  // GCC/Clang/nvcc on 64-bit targets

// x * y / z rounded up (ceil) or down, for 0 <= x, y and 0 < z, without overflow: int64 while
// x * y fits (the usual case), else 128-bit.
FACESDK_HD int64_t mul_div(int64_t x, int64_t y, int64_t add, int64_t z, bool round_up) {
  if (y == 0 || x <= (INT64_MAX - (z > add ? z : add)) / y) {
    const int64_t num = x * y + add;
    if (num <= 0) return 0;
    return round_up ? (num + z - 1) / z : num / z;
  }
  const Int128 num = static_cast<Int128>(x) * y + add;
  return static_cast<int64_t>(round_up ? (num + z - 1) / z : num / z);
}

// How many sampled ranks lie below rank r: max(0, ceil((r * cap - offset) / total)).
FACESDK_HD int64_t kept_below(int64_t r, int64_t total, int64_t cap, int64_t offset) {
  return mul_div(r, cap, -offset, total, true);
}

// The rank of the i-th sampled triplet: floor((i * total + offset) / cap).
FACESDK_HD int64_t sampled_rank(int64_t i, int64_t total, int64_t cap, int64_t offset) {
  return mul_div(i, total, offset, cap, false);
}

// The output slot of the triplet of global rank r (0..total-1), or -1 when the cap drops it.
FACESDK_HD int64_t output_slot(int64_t r, int64_t total, int64_t cap, int64_t offset) {
  if (total <= cap) return r;
  const int64_t below = kept_below(r, total, cap, offset);
  return kept_below(r + 1, total, cap, offset) > below ? below : -1;
}

// --- CPU kernels (mining_cpu.cpp): raw pointers, one range of anchors per call, so that the ---
// caller may split anchors across threads. Row-major arrays; every anchor writes only its rows.

// Phase 0: the distance matrix dist [B, B] (float64), in tiles of the upper triangle, each
// written with its mirror. emb_t: the embeddings transposed, [D, B] float64. Tiles
// [tile_begin, tile_end) of distance_tiles(B); callers may split that range across threads.
int64_t distance_tiles(int64_t batch);
void distances_cpu(const double* emb_t, int64_t batch, int64_t dim, int64_t tile_begin, int64_t tile_end,
                   double* dist);

// Phase 1, anchors [a_begin, a_end): pair_value rows (B each: the chosen negative or -1 for
// semihard/hardest; the number of triplets of the pair for batch_all; -1 or 0 where (a, p) is no
// pair) and row_count[a] (triplets of anchor a before the cap).
void count_rows_cpu(const double* dist, const int64_t* labels, const Params& params, int64_t a_begin,
                    int64_t a_end, int64_t* pair_value, int64_t* row_count);

// Phase 2, anchors [a_begin, a_end): writes the triplets of those anchors. row_offset[a]: the
// global rank of anchor a's first triplet (exclusive prefix sum of row_count); total: their sum.
void write_rows_cpu(const double* dist, const int64_t* labels, const Params& params,
                    const int64_t* pair_value, const int64_t* row_offset, int64_t total, int64_t a_begin,
                    int64_t a_end, int64_t* out_a, int64_t* out_p, int64_t* out_n);

// --- CUDA kernels (mining_cuda.cu): the same two phases over all anchors, on `stream`. ---
// Device pointers; emb is [B, D] float32 row-major. Returns cudaSuccess or the launch error
// (as int, cudaError_t's value, so that this header needs no CUDA header).
int count_cuda(const float* emb, const int64_t* labels, const Params& params, double* dist,
               int64_t* pair_value, int64_t* row_count, cudaStream_t stream);

// pair_value is rewritten (batch_all: counts become global offsets).
int write_cuda(const double* dist, const int64_t* labels, const Params& params, int64_t* pair_value,
               const int64_t* row_offset, int64_t total, int64_t* out_a, int64_t* out_p, int64_t* out_n,
               cudaStream_t stream);

}  // namespace mining
}  // namespace facesdk
