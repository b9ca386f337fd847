// Portable micro-kernels in plain C++ (the compiler vectorises the inner loops
// for the build's baseline: SSE2 on x86-64, NEON on aarch64). Built with
// -ffp-contract=off so every chain rounds the same way wherever it runs.
#include <algorithm>
#include <cmath>
#include <cstring>

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

// Mutual likelihood score, the algorithm of mls_simd.h in portable C++: 8
// lanes along d in GCC/Clang vector types (SSE2 or NEON, two registers each),
// log(s1 + s2) split into an exactly summed binary exponent and a product of
// mantissas, and one std::log per pair.
#if defined(__GNUC__) && !defined(__clang__)
// 32-byte vectors on 16-byte hardware: GCC warns that such arguments would pass
// differently with AVX, which only matters across an ABI boundary; these are
// internal and inlined.
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
using f8 = float __attribute__((vector_size(32)));
using i8 = std::int32_t __attribute__((vector_size(32)));
constexpr size_t kLanes = 8;
constexpr size_t kRenormSteps = 64;  // mantissas multiplied before the product is renormalised

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// x > 0 normal: adds its biased exponent to expo and returns its mantissa in [1, 2).
inline f8 split(const f8& x, i8& expo) {
  const i8 bits = reinterpret_cast<i8>(x);
  expo += (bits >> 23) & 0xFF;
  return reinterpret_cast<f8>((bits & 0x007FFFFF) | 0x3F800000);
}

// kLanes dimensions of one pair into its running sums.
inline void mls_step(const float* qm, const float* qs, const float* gm, const float* gs, f8& sq, i8& expo,
                     f8& prod) {
  const f8 t = load8(qs) + load8(gs), diff = load8(qm) - load8(gm);
  sq += diff * (diff / t);
  prod *= split(t, expo);
}

float mls_pair(const float* qm, const float* qs, const float* gm, const float* gs, size_t dim,
               double constant) {
  f8 sq = {}, prod = {1, 1, 1, 1, 1, 1, 1, 1};
  i8 expo = {};  // biased exponents, `steps` per lane
  std::int32_t steps = 0;
  const size_t full = dim - dim % kLanes;
  for (size_t d0 = 0; d0 < full; d0 += kRenormSteps * kLanes) {
    const size_t d1 = std::min(full, d0 + kRenormSteps * kLanes);
    for (size_t d = d0; d < d1; d += kLanes)
      mls_step(qm + d, qs + d, gm + d, gs + d, sq, expo, prod);
    steps += std::int32_t((d1 - d0) / kLanes) + 1;
    prod = split(prod, expo);
  }
  if (full < dim) {  // the tail: lanes past the end see mu = 0, s = 1/2 (t = 1)
    float tail[4][kLanes] = {{}, {}, {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f},
                             {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f}};
    std::memcpy(tail[0], qm + full, (dim - full) * sizeof(float));
    std::memcpy(tail[1], gm + full, (dim - full) * sizeof(float));
    std::memcpy(tail[2], qs + full, (dim - full) * sizeof(float));
    std::memcpy(tail[3], gs + full, (dim - full) * sizeof(float));
    mls_step(tail[0], tail[2], tail[1], tail[3], sq, expo, prod);
    prod = split(prod, expo);
    steps += 2;
  }
  double sum_sq = 0, prod_all = 1, e = 0;  // prod_all < 2^kLanes
  for (size_t l = 0; l < kLanes; ++l) {
    sum_sq += sq[l];
    prod_all *= prod[l];
    e += expo[l] - 127 * steps;
  }
  return float(-0.5 * (sum_sq + e * 0.69314718055994530942 + std::log(prod_all)) - constant);
}

void mls_rows(const float* q_mu, const float* q_s, const float* g_mu, const float* g_s, size_t rows,
              size_t dim, float* out) {
  const double constant = facesdk::detail::mls_constant(dim);
  for (size_t j = 0; j < rows; ++j)
    out[j] = mls_pair(q_mu, q_s, g_mu + j * dim, g_s + j * dim, dim, constant);
}

void widen_f16(const std::uint16_t* x, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = facesdk::detail::half_to_float(x[i]);
}

void widen_i8(const std::int8_t* x, size_t n, float scale, float* out) {
  for (size_t i = 0; i < n; ++i) out[i] = float(x[i]) * scale;
}

template <class Code, class Value>
void code_dots(const float* q, size_t mq, size_t dim, const Code* g, size_t rows, float* out, Value value) {
  for (size_t j = 0; j < rows; ++j)
    for (size_t i = 0; i < mq; ++i) {
      float s = 0.f;
      for (size_t d = 0; d < dim; ++d) s += q[i * dim + d] * value(g[j * dim + d]);
      out[i * rows + j] = s;
    }
}

void dots_f16(const float* q, size_t mq, size_t dim, const std::uint16_t* g, size_t rows, float* out) {
  code_dots(q, mq, dim, g, rows, out, facesdk::detail::half_to_float);
}

void dots_i8(const float* q, size_t mq, size_t dim, const std::int8_t* g, size_t rows, float* out) {
  code_dots(q, mq, dim, g, rows, out, [](std::int8_t c) { return float(c); });
}

constexpr facesdk::detail::TileKernels kGeneric{"generic", NR, MR, MR, pack, row_norms, distances, direct,
                                                mls_rows, widen_f16, widen_i8, dots_f16, dots_i8};

}  // namespace

const facesdk::detail::TileKernels* facesdk::detail::generic_kernels() { return &kGeneric; }
