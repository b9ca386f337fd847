// facesdk::mine_triplets on CUDA tensors: the torch glue around mining_cuda.cu. Built only where
// torch has CUDA (torch's CUDA headers do not compile against a CPU wheel); the schema is in
// mining_torch.cpp.
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sub.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "mining.h"
#include "mining_torch.h"

namespace facesdk {
namespace mining {
namespace {

void check_cuda(int status, const char* phase) {
  TORCH_CHECK(status == cudaSuccess, "mine_triplets (CUDA, ", phase,
              "): ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mine_triplets_cuda(const at::Tensor& embeddings,
                                                                  const at::Tensor& labels, double margin,
                                                                  c10::string_view mode, int64_t seed,
                                                                  c10::string_view fallback,
                                                                  int64_t max_triplets) {
  const Params params = make_params(embeddings, labels, margin, mode, seed, fallback, max_triplets);
  const c10::cuda::CUDAGuard guard(embeddings.device());
  const int64_t B = params.batch;
  // One warp per (a, p): B^2 / 8 blocks of 256 threads must fit CUDA's grid (2^31 - 1).
  TORCH_CHECK(B <= 131071, "mine_triplets (CUDA): at most 131,071 embeddings per batch, got ", B);
  const at::Tensor emb = embeddings.contiguous();
  const at::Tensor label = labels.contiguous();
  const auto long_options = label.options();
  at::Tensor dist = at::empty({B, B}, emb.options().dtype(at::kDouble));
  at::Tensor pair_value = at::empty({B, B}, long_options);
  at::Tensor row_count = at::empty({B}, long_options);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_cuda(count_cuda(emb.data_ptr<float>(), label.data_ptr<int64_t>(), params, dist.data_ptr<double>(),
                        pair_value.data_ptr<int64_t>(), row_count.data_ptr<int64_t>(), stream),
             "count");
  const at::Tensor inclusive = at::cumsum(row_count, 0);
  const int64_t total = B > 0 ? inclusive[B - 1].item<int64_t>() : 0;  // syncs: the output size
  const at::Tensor row_offset = at::sub(inclusive, row_count);
  const int64_t kept = std::min(total, params.max_triplets);
  at::Tensor out_a = at::empty({kept}, long_options);
  at::Tensor out_p = at::empty({kept}, long_options);
  at::Tensor out_n = at::empty({kept}, long_options);
  check_cuda(write_cuda(dist.data_ptr<double>(), label.data_ptr<int64_t>(), params, pair_value.data_ptr<int64_t>(),
                        row_offset.data_ptr<int64_t>(), total, out_a.data_ptr<int64_t>(), out_p.data_ptr<int64_t>(),
                        out_n.data_ptr<int64_t>(), stream),
             "write");
  return {out_a, out_p, out_n};
}

}  // namespace

TORCH_LIBRARY_IMPL(facesdk, CUDA, m) { m.impl("mine_triplets", &mine_triplets_cuda); }

}  // namespace mining
}  // namespace facesdk
