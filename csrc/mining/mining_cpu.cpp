// The CPU kernel of FaceNet's triplet mining: plain C++ over raw pointers (no torch, no CUDA).
// The rule is in mining.h; the torch glue (mining_torch.cpp) splits anchors across threads.
#include <algorithm>
#include <limits>
#include <vector>

#include "mining.h"

// No fused multiply-add, whatever the build flags: FMA would change the distances' last bits
// (aarch64 compilers contract by default), and CPU, CUDA and the reference must agree.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace facesdk {
namespace mining {
namespace {

// x86-64: the hot loops are also compiled for AVX2 and AVX-512 and picked at load time (each
// lane does the same IEEE operations, so the bits do not depend on the instruction set).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FACESDK_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FACESDK_CLONES
#endif

constexpr int64_t kTile = 64;  // distance tiles: kTile x kTile outputs (32 KiB of float64)

// One tile of the distance matrix, rows [i0, i0 + rows) x columns [j0, j0 + cols), into acc
// (row stride kTile). Each distance is the in-order sum over k of (x_ik - x_jk)^2 in float64;
// the j loop vectorises (one lane per j, so the order over k is kept).
FACESDK_CLONES
void distance_tile(const double* emb_t, int64_t B, int64_t D, int64_t i0, int64_t rows, int64_t j0, int64_t cols,
                   double* acc) {
  for (int64_t r = 0; r < rows; ++r) std::fill_n(acc + r * kTile, cols, 0.0);
  for (int64_t k = 0; k < D; ++k) {
    const double* column = emb_t + k * B;
    const double* xj = column + j0;
    for (int64_t r = 0; r < rows; ++r) {
      const double xi = column[i0 + r];
      double* out = acc + r * kTile;
      for (int64_t j = 0; j < cols; ++j) {
        const double diff = xi - xj[j];
        out[j] = out[j] + diff * diff;
      }
    }
  }
}

constexpr int64_t kChunk = 32;  // semi-hard counts are kept per chunk of negatives

// Semi-hard candidates: how many of d are in (lo, hi), in total and per chunk of kChunk (so that
// the k-th one is found without a second scan).
FACESDK_CLONES
int64_t count_between(const double* d, int64_t count, double lo, double hi, int64_t* chunk_counts) {
  int64_t found = 0;
  for (int64_t j0 = 0, chunk = 0; j0 < count; j0 += kChunk, ++chunk) {
    const int64_t end = std::min(count, j0 + kChunk);
    int64_t here = 0;
    for (int64_t j = j0; j < end; ++j) here += (d[j] > lo) & (d[j] < hi);
    chunk_counts[chunk] = here;
    found += here;
  }
  return found;
}

// batch_all: how many of d are below hi.
FACESDK_CLONES
int64_t count_below(const double* d, int64_t count, double hi) {
  int64_t found = 0;
  for (int64_t j = 0; j < count; ++j) found += d[j] < hi;
  return found;
}

// Index of the k-th (from 0) element of d in (lo, hi), in index order, given count_between's
// chunk counts; -1 if there are not that many.
int64_t kth_between(const double* d, int64_t count, double lo, double hi, const int64_t* chunk_counts, int64_t k) {
  int64_t j0 = 0, chunk = 0;
  for (; j0 < count && k >= chunk_counts[chunk]; j0 += kChunk, ++chunk) k -= chunk_counts[chunk];
  for (int64_t j = j0; j < count; ++j) {
    if (d[j] > lo && d[j] < hi && k-- == 0) return j;
  }
  return -1;
}

// Index (into neg_d) of the smallest distance above `above`; ties to the lower index; -1 if none.
int64_t closest_above(const double* neg_d, int64_t count, double above) {
  int64_t best = -1;
  double best_d = std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < count; ++j) {
    if (neg_d[j] > above && neg_d[j] < best_d) {
      best_d = neg_d[j];
      best = j;
    }
  }
  return best;
}

// The negatives of anchor a, ascending, and their distances; returns how many.
int64_t gather_negatives(const double* row, const int64_t* labels, int64_t B, int64_t a, int64_t* index,
                         double* d) {
  int64_t negatives = 0;
  for (int64_t n = 0; n < B; ++n) {
    if (labels[n] != labels[a]) {
      index[negatives] = n;
      d[negatives] = row[n];
      ++negatives;
    }
  }
  return negatives;
}

}  // namespace

int64_t distance_tiles(int64_t batch) {
  const int64_t blocks = (batch + kTile - 1) / kTile;
  return blocks * (blocks + 1) / 2;
}

void distances_cpu(const double* emb_t, int64_t B, int64_t D, int64_t tile_begin, int64_t tile_end, double* dist) {
  const int64_t blocks = (B + kTile - 1) / kTile;
  std::vector<double> acc(kTile * kTile);
  // Tiles (bi, bj), bi <= bj, numbered row by row; find the first one of this range.
  int64_t bi = 0, first = 0;
  while (first + (blocks - bi) <= tile_begin) first += blocks - bi++;
  int64_t bj = bi + (tile_begin - first);
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    const int64_t i0 = bi * kTile, j0 = bj * kTile;
    const int64_t rows = std::min(kTile, B - i0), cols = std::min(kTile, B - j0);
    distance_tile(emb_t, B, D, i0, rows, j0, cols, acc.data());
    for (int64_t r = 0; r < rows; ++r) {  // the tile and its mirror: d(i, j) == d(j, i) bit for bit
      for (int64_t c = 0; c < cols; ++c) {
        const double d = acc[r * kTile + c];
        dist[(i0 + r) * B + j0 + c] = d;
        dist[(j0 + c) * B + i0 + r] = d;
      }
    }
    if (++bj == blocks) bj = ++bi;
  }
}

void count_rows_cpu(const double* dist, const int64_t* labels, const Params& params, int64_t a_begin,
                    int64_t a_end, int64_t* pair_value, int64_t* row_count) {
  const int64_t B = params.batch;
  const bool batch_all = params.mode == Mode::kBatchAll;
  const double minus_inf = -std::numeric_limits<double>::infinity();
  std::vector<int64_t> neg_index(B);  // the anchor's negatives, ascending, and their distances
  std::vector<double> neg_d(B);
  std::vector<int64_t> chunk_counts(B / kChunk + 1);
  for (int64_t a = a_begin; a < a_end; ++a) {
    const double* row = dist + a * B;
    int64_t* value = pair_value + a * B;
    const int64_t label = labels[a];
    const int64_t negatives = gather_negatives(row, labels, B, a, neg_index.data(), neg_d.data());
    const int64_t closest = closest_above(neg_d.data(), negatives, minus_inf);
    int64_t triplets = 0;
    for (int64_t p = 0; p < B; ++p) {
      value[p] = batch_all ? 0 : -1;
      if (p == a || labels[p] != label || negatives == 0) continue;
      const double ap = row[p];
      const double hi = ap + params.margin;
      if (batch_all) {
        const int64_t count = count_below(neg_d.data(), negatives, hi);
        value[p] = count;
        triplets += count;
        continue;
      }
      int64_t chosen = -1;  // index into neg_index
      if (params.mode == Mode::kHardest) {
        chosen = closest;
      } else {
        const int64_t count = count_between(neg_d.data(), negatives, ap, hi, chunk_counts.data());
        if (count > 0) {
          const int64_t k = static_cast<int64_t>(pair_random(params.seed, a, p) % static_cast<uint64_t>(count));
          chosen = kth_between(neg_d.data(), negatives, ap, hi, chunk_counts.data(), k);
        } else if (params.fallback == Fallback::kEasy) {
          chosen = closest_above(neg_d.data(), negatives, ap);
        } else if (params.fallback == Fallback::kHardest) {
          chosen = closest;
        }
      }
      if (chosen >= 0) {
        value[p] = neg_index[chosen];
        ++triplets;
      }
    }
    row_count[a] = triplets;
  }
}

void write_rows_cpu(const double* dist, const int64_t* labels, const Params& params,
                    const int64_t* pair_value, const int64_t* row_offset, int64_t total, int64_t a_begin,
                    int64_t a_end, int64_t* out_a, int64_t* out_p, int64_t* out_n) {
  const int64_t B = params.batch;
  const int64_t cap = params.max_triplets;
  const bool capped = total > cap;
  const int64_t offset = capped ? sample_offset(params.seed, total) : 0;
  std::vector<int64_t> neg_index;
  std::vector<double> neg_d;
  if (params.mode == Mode::kBatchAll) {
    neg_index.resize(B);
    neg_d.resize(B);
  }
  for (int64_t a = a_begin; a < a_end; ++a) {
    const int64_t* value = pair_value + a * B;
    int64_t rank = row_offset[a];  // global rank of the next triplet of this anchor
    if (params.mode != Mode::kBatchAll) {
      for (int64_t p = 0; p < B; ++p) {
        if (value[p] < 0) continue;
        const int64_t slot = output_slot(rank++, total, cap, offset);
        if (slot >= 0) {
          out_a[slot] = a;
          out_p[slot] = p;
          out_n[slot] = value[p];
        }
      }
      continue;
    }
    const double* row = dist + a * B;
    const int64_t negatives = gather_negatives(row, labels, B, a, neg_index.data(), neg_d.data());
    for (int64_t p = 0; p < B; ++p) {
      const int64_t count = value[p];
      if (count == 0) continue;
      const double hi = row[p] + params.margin;
      // Output slots [slot, slot_end) belong to this pair; `next` is the pair-local index of the
      // triplet that fills `slot` (uncapped: every triplet, in order).
      int64_t slot = capped ? kept_below(rank, total, cap, offset) : rank;
      const int64_t slot_end = capped ? kept_below(rank + count, total, cap, offset) : rank + count;
      int64_t next = capped ? sampled_rank(slot, total, cap, offset) - rank : 0;
      for (int64_t j = 0, local = 0; j < negatives && slot < slot_end; ++j) {
        if (!(neg_d[j] < hi)) continue;
        if (local++ != next) continue;
        out_a[slot] = a;
        out_p[slot] = p;
        out_n[slot] = neg_index[j];
        ++slot;
        next = capped ? sampled_rank(slot, total, cap, offset) - rank : local;
      }
      rank += count;
    }
  }
}

}  // namespace mining
}  // namespace facesdk
