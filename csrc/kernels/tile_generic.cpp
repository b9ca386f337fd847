// Portable micro-kernels in plain C++ (the compiler vectorises the inner loops
// for the build's baseline: SSE2 on x86-64, NEON on aarch64). Built with
// -ffp-contract=off so every chain rounds the same way wherever it runs.
#include "tile.h"

namespace {

using std::size_t;
using std::uint32_t;

constexpr size_t NR = 8;
constexpr int MR = 4;

float norm_chain(const float* x, size_t dim) {
  float s = 0.f;
  for (size_t d = 0; d < dim; ++d) s += x[d] * x[d];
  return s;
}

void row_norms(const float* x, size_t rows, size_t dim, float* out) {
  for (size_t r = 0; r < rows; ++r) out[r] = norm_chain(x + r * dim, dim);
}

void pack(const float* g, size_t rows, size_t dim, float* panel, float* norms) {
  for (size_t j = 0; j < NR; ++j) {
    const bool valid = j < rows;
    for (size_t d = 0; d < dim; ++d) panel[d * NR + j] = valid ? g[j * dim + d] : 0.f;
    norms[j] = valid ? norm_chain(g + j * dim, dim) : 0.f;
  }
}

inline float finish(float qn, float gn, float dot) {
  const float v = (qn + gn) - (dot + dot);
  return v > 0.f ? v : 0.f;
}

inline bool below(float d, float bound, bool inclusive) { return inclusive ? d <= bound : d < bound; }

template <int M>
void micro(const float* q, size_t dim, const float* qn, const float* panel, const float* gn,
           const float* bound, bool inclusive, float* out, uint32_t* hits) {
  float acc[M][NR] = {};
  for (size_t d = 0; d < dim; ++d) {
    const float* b = panel + d * NR;
    for (int i = 0; i < M; ++i) {
      const float x = q[i * dim + d];
      for (size_t j = 0; j < NR; ++j) acc[i][j] += x * b[j];
    }
  }
  for (int i = 0; i < M; ++i) {
    uint32_t h = 0;
    for (size_t j = 0; j < NR; ++j) {
      const float dist = finish(qn[i], gn[j], acc[i][j]);
      out[i * NR + j] = dist;
      if (bound && below(dist, bound[i], inclusive)) h |= 1u << j;
    }
    if (bound) hits[i] = h;
  }
}

void distances(const float* q, size_t mr, size_t dim, const float* qn, const float* panel,
               const float* gn, const float* bound, bool inclusive, float* out, uint32_t* hits) {
  switch (mr) {
    case 1: return micro<1>(q, dim, qn, panel, gn, bound, inclusive, out, hits);
    case 2: return micro<2>(q, dim, qn, panel, gn, bound, inclusive, out, hits);
    case 3: return micro<3>(q, dim, qn, panel, gn, bound, inclusive, out, hits);
    default: return micro<MR>(q, dim, qn, panel, gn, bound, inclusive, out, hits);
  }
}

// Row by row, the same chains as pack + micro.
void direct(const float* q, size_t mq, size_t dim, const float* qn, const float* g, size_t rows,
            const float* bound, bool inclusive, float* out, uint32_t* hits, float* gnorms) {
  for (size_t i = 0; i < mq; ++i) hits[i] = 0;
  for (size_t j = 0; j < NR; ++j) {
    const float* row = g + j * dim;
    gnorms[j] = j < rows ? norm_chain(row, dim) : 0.f;
    for (size_t i = 0; i < mq; ++i) {
      float dot = 0.f;
      for (size_t d = 0; j < rows && d < dim; ++d) dot += q[i * dim + d] * row[d];
      const float dist = finish(qn[i], gnorms[j], dot);
      out[i * NR + j] = dist;
      if (bound && below(dist, bound[i], inclusive)) hits[i] |= 1u << j;
    }
  }
}

constexpr facesdk::detail::TileKernels kGeneric{"generic", NR, MR, MR, pack, row_norms, distances, direct};

}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::generic_kernels() { return &kGeneric; }
