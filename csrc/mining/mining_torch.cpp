// facesdk::mine_triplets: the schema (declared once, here) and its CPU registration.
// The CUDA registration lives in mining_torch_cuda.cpp, built only where torch has CUDA.
#include <ATen/Parallel.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sub.h>
#include <ATen/ops/to.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>

#include "mining.h"
#include "mining_torch.h"

namespace facesdk {
namespace mining {

Params make_params(const at::Tensor& embeddings, const at::Tensor& labels, double margin,
                   c10::string_view mode, int64_t seed, c10::string_view fallback, int64_t max_triplets) {
  TORCH_CHECK(embeddings.dim() == 2, "mine_triplets: embeddings must be [B, D], got ", embeddings.sizes());
  TORCH_CHECK(embeddings.scalar_type() == at::kFloat, "mine_triplets: embeddings must be float32, got ",
              embeddings.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == embeddings.size(0),
              "mine_triplets: labels must be [B] with B = ", embeddings.size(0), ", got ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "mine_triplets: labels must be int64, got ",
              labels.scalar_type());
  TORCH_CHECK(labels.device() == embeddings.device(), "mine_triplets: labels on ", labels.device(),
              ", embeddings on ", embeddings.device());
  TORCH_CHECK(embeddings.size(1) >= 1, "mine_triplets: embeddings need at least one dimension");
  TORCH_CHECK(embeddings.size(0) < (int64_t{1} << 31), "mine_triplets: at most 2^31 - 1 embeddings");
  TORCH_CHECK(margin >= 0 && margin < std::numeric_limits<double>::infinity(),
              "mine_triplets: margin must be finite and >= 0, got ", margin);
  TORCH_CHECK(max_triplets >= 1, "mine_triplets: max_triplets must be >= 1, got ", max_triplets);
  Params params;
  params.batch = embeddings.size(0);
  params.dim = embeddings.size(1);
  params.margin = margin;
  params.seed = static_cast<uint64_t>(seed);
  params.max_triplets = max_triplets;
  if (mode == "semihard") {
    params.mode = Mode::kSemihard;
  } else if (mode == "hardest") {
    params.mode = Mode::kHardest;
  } else if (mode == "batch_all") {
    params.mode = Mode::kBatchAll;
  } else {
    TORCH_CHECK(false, "mine_triplets: mode must be semihard, hardest or batch_all, got ", std::string(mode));
  }
  if (fallback == "none") {
    params.fallback = Fallback::kNone;
  } else if (fallback == "easy") {
    params.fallback = Fallback::kEasy;
  } else if (fallback == "hardest") {
    params.fallback = Fallback::kHardest;
  } else {
    TORCH_CHECK(false, "mine_triplets: fallback must be none, easy or hardest, got ", std::string(fallback));
  }
  return params;
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_triplets_cpu(const at::Tensor& embeddings,
                                                                 const at::Tensor& labels, double margin,
                                                                 c10::string_view mode, int64_t seed,
                                                                 c10::string_view fallback,
                                                                 int64_t max_triplets) {
  const Params params = make_params(embeddings, labels, margin, mode, seed, fallback, max_triplets);
  const int64_t B = params.batch;
  // [D, B] float64: the distance loop runs along B, and float -> double is exact.
  const at::Tensor emb_t = embeddings.t().to(at::kDouble).contiguous();
  const at::Tensor label = labels.contiguous();
  const auto long_options = label.options();
  at::Tensor dist = at::empty({B, B}, embeddings.options().dtype(at::kDouble));
  at::Tensor pair_value = at::empty({B, B}, long_options);
  at::Tensor row_count = at::empty({B}, long_options);
  at::parallel_for(0, distance_tiles(B), 1, [&](int64_t begin, int64_t end) {
    distances_cpu(emb_t.data_ptr<double>(), B, params.dim, begin, end, dist.data_ptr<double>());
  });
  // A few anchors per task: every anchor costs B * positives operations.
  constexpr int64_t kGrain = 8;
  at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
    count_rows_cpu(dist.data_ptr<double>(), label.data_ptr<int64_t>(), params, begin, end,
                   pair_value.data_ptr<int64_t>(), row_count.data_ptr<int64_t>());
  });
  const at::Tensor inclusive = at::cumsum(row_count, 0);
  const int64_t total = B > 0 ? inclusive[B - 1].item<int64_t>() : 0;
  const at::Tensor row_offset = at::sub(inclusive, row_count);
  const int64_t kept = std::min(total, params.max_triplets);
  at::Tensor out_a = at::empty({kept}, long_options);
  at::Tensor out_p = at::empty({kept}, long_options);
  at::Tensor out_n = at::empty({kept}, long_options);
  if (kept > 0) {
    at::parallel_for(0, B, kGrain, [&](int64_t begin, int64_t end) {
      write_rows_cpu(dist.data_ptr<double>(), label.data_ptr<int64_t>(), params,
                     pair_value.data_ptr<int64_t>(), row_offset.data_ptr<int64_t>(), total, begin, end,
                     out_a.data_ptr<int64_t>(), out_p.data_ptr<int64_t>(), out_n.data_ptr<int64_t>());
    });
  }
  return {out_a, out_p, out_n};
}

}  // namespace

TORCH_LIBRARY(facesdk, m) {
  m.def(
      "mine_triplets(Tensor embeddings, Tensor labels, float margin, str mode, int seed, str fallback, "
      "int max_triplets) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(facesdk, CPU, m) { m.impl("mine_triplets", &mine_triplets_cpu); }

}  // namespace mining
}  // namespace facesdk
