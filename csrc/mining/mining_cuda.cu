// The CUDA kernel of FaceNet's triplet mining. No torch header: raw device pointers and a
// cudaStream_t (torch's CUDA headers do not compile against a CPU torch wheel, so this file is
// compiled alone by nvcc in CI; mining_torch_cuda.cpp is the torch glue).
//
// The rule is mining.h's, the same as the CPU kernel's, and the bits agree: distances are summed
// in float64 in the same order with explicit round-to-nearest operations (no FMA contraction),
// counts and k-th choices are integers, and ties go to the lower index on both devices.
//
// Layout: one warp per anchor-positive pair (a, p) for the choices, one warp per anchor for the
// in-order compaction; two phases so that the caller can size the output between them.
#include <cuda_runtime.h>

#include "mining.h"

namespace facesdk {
namespace mining {
namespace {

constexpr int kTile = 16;            // distance tile: kTile x kTile threads
constexpr int kThreads = 256;        // 8 warps per block for the warp kernels
constexpr int kWarp = 32;
constexpr unsigned kAll = 0xffffffffu;
constexpr int64_t kNone = INT64_MAX;  // "no negative" in argmin reductions (loses every tie)

// dist[i, j] = sum over k in order of (x_ik - x_jk)^2, float64, tiled through shared memory.
__global__ void distance_kernel(const float* __restrict__ emb, int64_t B, int64_t D, double* __restrict__ dist) {
  __shared__ float rows_i[kTile][kTile + 1];
  __shared__ float rows_j[kTile][kTile + 1];
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * kTile, j0 = static_cast<int64_t>(blockIdx.x) * kTile;
  const int ty = threadIdx.y, tx = threadIdx.x;
  double acc = 0.0;
  for (int64_t k0 = 0; k0 < D; k0 += kTile) {
    const int64_t k = k0 + tx;
    rows_i[ty][tx] = (i0 + ty < B && k < D) ? emb[(i0 + ty) * D + k] : 0.0f;
    rows_j[ty][tx] = (j0 + ty < B && k < D) ? emb[(j0 + ty) * D + k] : 0.0f;
    __syncthreads();
    const int64_t depth = D - k0 < kTile ? D - k0 : kTile;
    for (int kk = 0; kk < depth; ++kk) {
      const double diff = __dsub_rn(static_cast<double>(rows_i[ty][kk]), static_cast<double>(rows_j[tx][kk]));
      acc = __dadd_rn(acc, __dmul_rn(diff, diff));
    }
    __syncthreads();
  }
  if (i0 + ty < B && j0 + tx < B) dist[(i0 + ty) * B + j0 + tx] = acc;
}

__device__ __forceinline__ int64_t warp_sum(int64_t value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(kAll, value, offset);
  return value;
}

// The closest negative of the anchor with distance > above (-inf: any); ties to the lower index.
// Every lane returns the answer, or kNone.
__device__ int64_t warp_closest(const double* row, const int64_t* labels, int64_t label, int64_t B, double above,
                                int lane) {
  double best_d = __longlong_as_double(0x7ff0000000000000ll);  // +inf
  int64_t best = kNone;
  for (int64_t n = lane; n < B; n += kWarp) {
    const double d = row[n];
    if (labels[n] != label && d > above && d < best_d) {  // ascending n per lane: the first wins a tie
      best_d = d;
      best = n;
    }
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const double other_d = __shfl_xor_sync(kAll, best_d, offset);
    const int64_t other = __shfl_xor_sync(kAll, best, offset);
    if (other_d < best_d || (other_d == best_d && other < best)) {
      best_d = other_d;
      best = other;
    }
  }
  return best;
}

__device__ __forceinline__ int64_t global_warp() {
  return (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
}

// One warp per (a, p): semihard/hardest write the chosen negative or -1; batch_all the count.
__global__ void pair_kernel(const double* __restrict__ dist, const int64_t* __restrict__ labels, Params params,
                            int64_t* __restrict__ pair_value) {
  const int64_t B = params.batch;
  const int64_t pair = global_warp();
  if (pair >= B * B) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int64_t a = pair / B, p = pair % B;
  const int64_t label = labels[a];
  const bool batch_all = params.mode == Mode::kBatchAll;
  if (p == a || labels[p] != label) {
    if (lane == 0) pair_value[pair] = batch_all ? 0 : -1;
    return;
  }
  const double* row = dist + a * B;
  const double ap = row[p];
  const double hi = __dadd_rn(ap, params.margin);
  const double minus_inf = __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
  if (batch_all) {
    int64_t count = 0;
    for (int64_t n = lane; n < B; n += kWarp) count += labels[n] != label && row[n] < hi;
    count = warp_sum(count);
    if (lane == 0) pair_value[pair] = count;
    return;
  }
  int64_t chosen = kNone;
  if (params.mode == Mode::kHardest) {
    chosen = warp_closest(row, labels, label, B, minus_inf, lane);
  } else {
    int64_t count = 0;
    for (int64_t n = lane; n < B; n += kWarp) count += labels[n] != label && row[n] > ap && row[n] < hi;
    count = warp_sum(count);
    if (count > 0) {
      // The k-th semi-hard negative in index order, 32 candidates per step.
      int64_t k = static_cast<int64_t>(pair_random(params.seed, a, p) % static_cast<uint64_t>(count));
      for (int64_t base = 0; base < B; base += kWarp) {
        const int64_t n = base + lane;
        const bool in = n < B && labels[n] != label && row[n] > ap && row[n] < hi;
        const unsigned found = __ballot_sync(kAll, in);
        const int here = __popc(found);
        if (k < here) {  // uniform: k and here are the same on every lane
          const int before = __popc(found & ((1u << lane) - 1u));
          const unsigned hit = __ballot_sync(kAll, in && before == k);
          chosen = base + __ffs(hit) - 1;
          break;
        }
        k -= here;
      }
    } else if (params.fallback == Fallback::kEasy) {
      chosen = warp_closest(row, labels, label, B, ap, lane);
    } else if (params.fallback == Fallback::kHardest) {
      chosen = warp_closest(row, labels, label, B, minus_inf, lane);
    }
  }
  if (lane == 0) pair_value[pair] = chosen == kNone ? -1 : chosen;
}

// One warp per anchor: its number of triplets before the cap.
__global__ void row_count_kernel(const int64_t* __restrict__ pair_value, Params params,
                                 int64_t* __restrict__ row_count) {
  const int64_t B = params.batch;
  const int64_t a = global_warp();
  if (a >= B) return;
  const int lane = threadIdx.x % kWarp;
  const bool batch_all = params.mode == Mode::kBatchAll;
  int64_t count = 0;
  for (int64_t p = lane; p < B; p += kWarp) {
    const int64_t value = pair_value[a * B + p];
    count += batch_all ? value : (value >= 0);
  }
  count = warp_sum(count);
  if (lane == 0) row_count[a] = count;
}

// semihard/hardest, one warp per anchor: the pairs with a negative, in p order, to their slots.
__global__ void write_chosen_kernel(const int64_t* __restrict__ pair_value, const int64_t* __restrict__ row_offset,
                                    Params params, int64_t total, int64_t* __restrict__ out_a,
                                    int64_t* __restrict__ out_p, int64_t* __restrict__ out_n) {
  const int64_t B = params.batch;
  const int64_t a = global_warp();
  if (a >= B) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t cap = params.max_triplets;
  const int64_t offset = total > cap ? sample_offset(params.seed, total) : 0;
  int64_t rank = row_offset[a];
  for (int64_t base = 0; base < B; base += kWarp) {
    const int64_t p = base + lane;
    const int64_t n = p < B ? pair_value[a * B + p] : -1;
    const unsigned found = __ballot_sync(kAll, n >= 0);
    if (n >= 0) {
      const int64_t slot = output_slot(rank + __popc(found & ((1u << lane) - 1u)), total, cap, offset);
      if (slot >= 0) {
        out_a[slot] = a;
        out_p[slot] = p;
        out_n[slot] = n;
      }
    }
    rank += __popc(found);
  }
}

// batch_all, one warp per anchor: pair counts -> global rank of each pair's first triplet.
__global__ void pair_offset_kernel(int64_t* __restrict__ pair_value, const int64_t* __restrict__ row_offset,
                                   Params params) {
  const int64_t B = params.batch;
  const int64_t a = global_warp();
  if (a >= B) return;
  const int lane = threadIdx.x % kWarp;
  int64_t rank = row_offset[a];
  for (int64_t base = 0; base < B; base += kWarp) {
    const int64_t p = base + lane;
    const int64_t count = p < B ? pair_value[a * B + p] : 0;
    int64_t inclusive = count;
    for (int step = 1; step < kWarp; step *= 2) {
      const int64_t left = __shfl_up_sync(kAll, inclusive, step);
      if (lane >= step) inclusive += left;
    }
    if (p < B) pair_value[a * B + p] = rank + inclusive - count;
    rank += __shfl_sync(kAll, inclusive, kWarp - 1);
  }
}

// batch_all, one warp per (a, p): every violating negative, in n order, to its slot.
__global__ void write_all_kernel(const double* __restrict__ dist, const int64_t* __restrict__ labels,
                                 const int64_t* __restrict__ pair_offset, Params params, int64_t total,
                                 int64_t* __restrict__ out_a, int64_t* __restrict__ out_p,
                                 int64_t* __restrict__ out_n) {
  const int64_t B = params.batch;
  const int64_t pair = global_warp();
  if (pair >= B * B) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t a = pair / B, p = pair % B;
  const int64_t label = labels[a];
  if (p == a || labels[p] != label) return;
  const int64_t cap = params.max_triplets;
  const int64_t offset = total > cap ? sample_offset(params.seed, total) : 0;
  const double* row = dist + a * B;
  const double hi = __dadd_rn(row[p], params.margin);
  int64_t rank = pair_offset[pair];
  for (int64_t base = 0; base < B; base += kWarp) {
    const int64_t n = base + lane;
    const bool in = n < B && labels[n] != label && row[n] < hi;
    const unsigned found = __ballot_sync(kAll, in);
    if (in) {
      const int64_t slot = output_slot(rank + __popc(found & ((1u << lane) - 1u)), total, cap, offset);
      if (slot >= 0) {
        out_a[slot] = a;
        out_p[slot] = p;
        out_n[slot] = n;
      }
    }
    rank += __popc(found);
  }
}

unsigned blocks_for_warps(int64_t warps) {
  return static_cast<unsigned>((warps * kWarp + kThreads - 1) / kThreads);
}

}  // namespace

int count_cuda(const float* emb, const int64_t* labels, const Params& params, double* dist, int64_t* pair_value,
               int64_t* row_count, cudaStream_t stream) {
  const int64_t B = params.batch;
  if (B == 0) return cudaSuccess;
  const unsigned tiles = static_cast<unsigned>((B + kTile - 1) / kTile);
  distance_kernel<<<dim3(tiles, tiles), dim3(kTile, kTile), 0, stream>>>(emb, B, params.dim, dist);
  pair_kernel<<<blocks_for_warps(B * B), kThreads, 0, stream>>>(dist, labels, params, pair_value);
  row_count_kernel<<<blocks_for_warps(B), kThreads, 0, stream>>>(pair_value, params, row_count);
  return static_cast<int>(cudaGetLastError());
}

int write_cuda(const double* dist, const int64_t* labels, const Params& params, int64_t* pair_value,
               const int64_t* row_offset, int64_t total, int64_t* out_a, int64_t* out_p, int64_t* out_n,
               cudaStream_t stream) {
  const int64_t B = params.batch;
  if (B == 0 || total == 0) return cudaSuccess;
  if (params.mode == Mode::kBatchAll) {
    pair_offset_kernel<<<blocks_for_warps(B), kThreads, 0, stream>>>(pair_value, row_offset, params);
    write_all_kernel<<<blocks_for_warps(B * B), kThreads, 0, stream>>>(dist, labels, pair_value, params, total,
                                                                       out_a, out_p, out_n);
  } else {
    write_chosen_kernel<<<blocks_for_warps(B), kThreads, 0, stream>>>(pair_value, row_offset, params, total, out_a,
                                                                      out_p, out_n);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace mining
}  // namespace facesdk
