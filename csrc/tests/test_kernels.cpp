// C++ test of the kernel library through its public header only: every
// instruction set the CPU runs against a double-precision reference, the
// argument checks, and the documented edge cases, for squared L2 and for the
// mutual likelihood score. No framework; prints "N passed, M failed" and exits
// non-zero on any failure.
#include <facesdk/kernels.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

int passed = 0, failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

void check_throws(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  try {
    call();
    check(false, what + " (no exception)");
  } catch (const std::invalid_argument& e) {
    check(std::string(e.what()).find(needle) != std::string::npos, what + ": " + e.what());
  }
}

std::vector<float> random_rows(std::mt19937& rng, std::size_t rows, std::size_t dim) {
  std::normal_distribution<float> normal;
  std::vector<float> x(rows * dim);
  for (float& v : x) v = normal(rng);
  return x;
}

double ref_dist(const float* a, const float* b, std::size_t dim) {
  double s = 0;
  for (std::size_t d = 0; d < dim; ++d) s += (double(a[d]) - b[d]) * (double(a[d]) - b[d]);
  return s;
}

double norm2(const float* a, std::size_t dim) {
  double s = 0;
  for (std::size_t d = 0; d < dim; ++d) s += double(a[d]) * a[d];
  return s;
}

void test_shape(const std::string& isa, std::size_t nq, std::size_t ng, std::size_t dim) {
  std::mt19937 rng(unsigned(nq * 131 + ng * 7 + dim));
  const auto Q = random_rows(rng, nq, dim), G = random_rows(rng, ng, dim);
  const std::string tag = isa + " " + std::to_string(nq) + "x" + std::to_string(ng) + "x" + std::to_string(dim);

  std::vector<float> D(nq * ng);
  facesdk::sq_l2(Q.data(), nq, G.data(), ng, dim, D.data());
  bool close = true;
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < ng; ++j) {
      const double tol = 4.0 * dim * 1.2e-7 * (norm2(&Q[i * dim], dim) + norm2(&G[j * dim], dim));
      close &= std::abs(D[i * ng + j] - ref_dist(&Q[i * dim], &G[j * dim], dim)) <= tol;
    }
  check(close, tag + " sq_l2 vs double reference");

  // topk must be exactly the smallest of sq_l2's own distances, ties to lower index.
  const std::size_t k = 3;
  std::vector<std::int64_t> idx(nq * k);
  std::vector<float> dist(nq * k);
  facesdk::topk(Q.data(), nq, G.data(), ng, dim, k, idx.data(), dist.data());
  bool exact = true;
  for (std::size_t i = 0; i < nq; ++i) {
    std::vector<bool> taken(ng, false);
    for (std::size_t r = 0; r < k; ++r) {
      std::int64_t best = -1;
      for (std::size_t j = 0; j < ng; ++j)
        if (!taken[j] && (best < 0 || D[i * ng + j] < D[i * ng + std::size_t(best)])) best = std::int64_t(j);
      if (best >= 0) taken[std::size_t(best)] = true;
      exact &= idx[i * k + r] == best;
      exact &= best < 0 ? std::isinf(dist[i * k + r]) : dist[i * k + r] == D[i * ng + std::size_t(best)];
    }
  }
  check(exact, tag + " topk == selection over sq_l2");

  // match: the pairs at or below the median distance, in (query, gallery) order.
  const float threshold = nq * ng > 0 ? D[(nq * ng) / 2] : 1.f;
  const facesdk::Matches m = facesdk::match(Q.data(), nq, G.data(), ng, dim, threshold);
  std::size_t at = 0;
  bool same = true;
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < ng; ++j)
      if (D[i * ng + j] <= threshold) {
        same &= at < m.query.size() && m.query[at] == std::int64_t(i) && m.gallery[at] == std::int64_t(j) &&
                m.distance[at] == D[i * ng + j];
        ++at;
      }
  check(same && at == m.query.size(), tag + " match == threshold over sq_l2");
}

void test_errors() {
  const std::vector<float> x(8, 1.f);
  std::vector<float> out(16);
  std::vector<std::int64_t> idx(4);
  check_throws([&] { facesdk::sq_l2(x.data(), 2, x.data(), 2, 0, out.data()); }, "dim", "dim 0");
  check_throws([&] { facesdk::sq_l2(nullptr, 2, x.data(), 2, 4, out.data()); }, "Q is null", "null Q");
  check_throws([&] { facesdk::topk(x.data(), 2, x.data(), 2, 4, 0, idx.data(), out.data()); }, "k must be", "k 0");
  check_throws([&] { facesdk::match(x.data(), 2, x.data(), 2, 4, -1.f); }, "threshold", "negative threshold");
  check_throws([&] { facesdk::match(x.data(), 2, x.data(), 2, 4, std::nanf("")); }, "threshold", "NaN threshold");
  std::vector<float> bad = x;
  bad[6] = std::numeric_limits<float>::infinity();
  check_throws([&] { facesdk::sq_l2(x.data(), 2, bad.data(), 2, 4, out.data()); }, "G row 1", "Inf in G");
  check_throws([&] { facesdk::sq_l2(bad.data(), 2, x.data(), 2, 4, out.data()); }, "Q row 1", "Inf in Q");
  check_throws([] { facesdk::set_isa("no-such-isa"); }, "not available", "unknown isa");
}

void test_short_gallery_pads() {
  const std::vector<float> q = {0, 0}, g = {3, 4};
  std::vector<std::int64_t> idx(3);
  std::vector<float> dist(3);
  facesdk::topk(q.data(), 1, g.data(), 1, 2, 3, idx.data(), dist.data());
  check(idx[0] == 0 && dist[0] == 25.f && idx[1] == -1 && idx[2] == -1 && std::isinf(dist[2]), "topk pads with -1/inf");
}

// ---- mutual likelihood score ----

struct Gaussians {
  std::vector<float> mu, s;
};

// Unit-scale means; variances log-uniform over [scale e^-4, scale e^4].
Gaussians random_gaussians(std::mt19937& rng, std::size_t rows, std::size_t dim, float scale) {
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(-4.f, 4.f);
  Gaussians x{std::vector<float>(rows * dim), std::vector<float>(rows * dim)};
  for (float& v : x.mu) v = normal(rng) / std::sqrt(float(dim));
  for (float& v : x.s) v = scale * std::exp(uniform(rng));
  return x;
}

// The exact score of the float32 inputs (in double), and R, the magnitude the
// documented error bound scales with.
double ref_mls(const float* m1, const float* s1, const float* m2, const float* s2, std::size_t dim, double* R) {
  double sum = 0, mag = 0;
  for (std::size_t d = 0; d < dim; ++d) {
    const double t = double(s1[d]) + s2[d], diff = double(m1[d]) - m2[d];
    sum += diff * diff / t + std::log(t);
    mag += diff * diff / t + std::abs(std::log(t));
  }
  const double constant = 0.5 * double(dim) * std::log(2 * M_PI);
  *R = mag + constant;
  return -0.5 * sum - constant;
}

double mls_bound(std::size_t dim, double R) { return (double((dim + 7) / 8) + 16) * std::ldexp(1.0, -24) * R; }

void test_mls_shape(const std::string& isa, std::size_t nq, std::size_t ng, std::size_t dim, float scale) {
  std::mt19937 rng(unsigned(nq * 131 + ng * 7 + dim));
  const Gaussians Q = random_gaussians(rng, nq, dim, scale), G = random_gaussians(rng, ng, dim, scale);
  char tag_text[96];
  std::snprintf(tag_text, sizeof tag_text, "%s mls %zux%zux%zu s~%g", isa.c_str(), nq, ng, dim, double(scale));
  const std::string tag = tag_text;

  std::vector<float> S(nq * ng);
  facesdk::mls(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, S.data());
  bool close = true;
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < ng; ++j) {
      double R;
      const double ref = ref_mls(&Q.mu[i * dim], &Q.s[i * dim], &G.mu[j * dim], &G.s[j * dim], dim, &R);
      close &= std::abs(S[i * ng + j] - ref) <= mls_bound(dim, R);
    }
  check(close, tag + " vs double reference");

  // Symmetric to the last bit.
  std::vector<float> T(ng * nq);
  facesdk::mls(G.mu.data(), G.s.data(), ng, Q.mu.data(), Q.s.data(), nq, dim, T.data());
  bool symmetric = true;
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < ng; ++j) symmetric &= S[i * ng + j] == T[j * nq + i];
  check(symmetric, tag + " MLS(a, b) == MLS(b, a)");

  // mls_topk: exactly the highest of mls's own scores, ties to the lower index.
  const std::size_t k = 3;
  std::vector<std::int64_t> idx(nq * k);
  std::vector<float> top(nq * k);
  facesdk::mls_topk(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, k, idx.data(), top.data());
  bool exact = true;
  for (std::size_t i = 0; i < nq; ++i) {
    std::vector<bool> taken(ng, false);
    for (std::size_t r = 0; r < k; ++r) {
      std::int64_t best = -1;
      for (std::size_t j = 0; j < ng; ++j)
        if (!taken[j] && (best < 0 || S[i * ng + j] > S[i * ng + std::size_t(best)])) best = std::int64_t(j);
      if (best >= 0) taken[std::size_t(best)] = true;
      exact &= idx[i * k + r] == best;
      exact &= best < 0 ? top[i * k + r] == -std::numeric_limits<float>::infinity()
                        : top[i * k + r] == S[i * ng + std::size_t(best)];
    }
  }
  check(exact, tag + " mls_topk == selection over mls");

  // mls_match: the pairs at or above the median score, in (query, gallery) order.
  std::vector<float> sorted = S;
  std::sort(sorted.begin(), sorted.end());
  const float threshold = sorted.empty() ? 0.f : sorted[sorted.size() / 2];
  const facesdk::MlsMatches m = facesdk::mls_match(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, threshold);
  std::size_t at = 0;
  bool same = true;
  for (std::size_t i = 0; i < nq; ++i)
    for (std::size_t j = 0; j < ng; ++j)
      if (S[i * ng + j] >= threshold) {
        same &= at < m.query.size() && m.query[at] == std::int64_t(i) && m.gallery[at] == std::int64_t(j) &&
                m.score[at] == S[i * ng + j];
        ++at;
      }
  check(same && at == m.query.size(), tag + " mls_match == threshold over mls");
}

void test_mls_known_value() {
  // D = 2: (0,0) vs (3,4), every s = 1/2 so s1 + s2 = 1: -1/2 (9 + 16) - log(2 pi).
  const std::vector<float> m1 = {0, 0}, m2 = {3, 4}, s = {0.5f, 0.5f};
  float out = 0;
  facesdk::mls(m1.data(), s.data(), 1, m2.data(), s.data(), 1, 2, &out);
  check(std::abs(out - (-12.5 - std::log(2 * M_PI))) < 1e-5, facesdk::isa() + " mls known value");
}

void test_mls_threads_do_not_change_results() {
#ifdef _OPENMP
  std::mt19937 rng(7);
  const std::size_t nq = 3, ng = 6001, dim = 64;
  const Gaussians Q = random_gaussians(rng, nq, dim, 0.1f), G = random_gaussians(rng, ng, dim, 0.1f);
  const auto run = [&](int threads, std::vector<float>& S, std::vector<std::int64_t>& idx, std::vector<float>& top,
                       facesdk::MlsMatches& m) {
    omp_set_num_threads(threads);
    S.resize(nq * ng);
    idx.resize(nq * 5);
    top.resize(nq * 5);
    facesdk::mls(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, S.data());
    facesdk::mls_topk(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, 5, idx.data(), top.data());
    m = facesdk::mls_match(Q.mu.data(), Q.s.data(), nq, G.mu.data(), G.s.data(), ng, dim, S[ng / 2]);
  };
  const int initial = omp_get_max_threads();
  std::vector<float> S1, top1;
  std::vector<std::int64_t> idx1;
  facesdk::MlsMatches m1;
  run(1, S1, idx1, top1, m1);
  for (int threads : {2, 3, 7}) {
    std::vector<float> S, top;
    std::vector<std::int64_t> idx;
    facesdk::MlsMatches m;
    run(threads, S, idx, top, m);
    check(S == S1 && idx == idx1 && top == top1 && m.query == m1.query && m.gallery == m1.gallery && m.score == m1.score,
          facesdk::isa() + " mls results with " + std::to_string(threads) + " threads == 1 thread");
  }
  omp_set_num_threads(initial);
#endif
}

void test_mls_ties_and_padding() {
  // Rows 0..5 are copies of one Gaussian: equal scores go to the lower index.
  const std::size_t dim = 5;
  std::vector<float> mu(6 * dim, 0.25f), s(6 * dim, 0.3f);
  std::vector<std::int64_t> idx(8);
  std::vector<float> top(8);
  facesdk::mls_topk(mu.data(), s.data(), 1, mu.data(), s.data(), 6, dim, 8, idx.data(), top.data());
  bool ok = true;
  for (std::size_t r = 0; r < 6; ++r) ok &= idx[r] == std::int64_t(r) && top[r] == top[0];
  ok &= idx[6] == -1 && idx[7] == -1 && top[7] == -std::numeric_limits<float>::infinity();
  check(ok, facesdk::isa() + " mls_topk ties to the lower index, pads with -1/-inf");
}

void test_mls_extremes() {
  // Variances at both ends of the accepted range, and a score that overflows.
  const std::size_t dim = 19;
  const std::vector<float> zero(dim, 0.f), lo(dim, facesdk::kMlsMinVariance), hi(dim, facesdk::kMlsMaxVariance);
  const double c = 0.5 * dim * std::log(2 * M_PI);
  float out = 0;
  facesdk::mls(zero.data(), lo.data(), 1, zero.data(), lo.data(), 1, dim, &out);
  const double expect_lo = -0.5 * dim * std::log(2.0 * facesdk::kMlsMinVariance) - c;
  check(std::abs(out - expect_lo) <= 1e-6 * std::abs(expect_lo), facesdk::isa() + " mls at the smallest variance");
  facesdk::mls(zero.data(), hi.data(), 1, zero.data(), hi.data(), 1, dim, &out);
  const double expect_hi = -0.5 * dim * std::log(2.0 * facesdk::kMlsMaxVariance) - c;
  check(std::abs(out - expect_hi) <= 1e-6 * std::abs(expect_hi), facesdk::isa() + " mls at the largest variance");
  const std::vector<float> big(dim, 3e38f), minus_big(dim, -3e38f);
  facesdk::mls(big.data(), lo.data(), 1, minus_big.data(), lo.data(), 1, dim, &out);
  check(out == -std::numeric_limits<float>::infinity(), facesdk::isa() + " mls overflows to -inf, not NaN");
}

void test_mls_errors() {
  const std::size_t dim = 4;
  const std::vector<float> mu(2 * dim, 0.f), s(2 * dim, 1.f);
  std::vector<float> out(4);
  std::vector<std::int64_t> idx(4);
  const float* m = mu.data();
  const float* v = s.data();
  check_throws([&] { facesdk::mls(m, v, 2, m, v, 2, 0, out.data()); }, "dim", "mls dim 0");
  check_throws([&] { facesdk::mls(nullptr, v, 2, m, v, 2, dim, out.data()); }, "Q_mu", "mls null Q_mu");
  check_throws([&] { facesdk::mls(m, v, 2, m, nullptr, 2, dim, out.data()); }, "G_s", "mls null G_s");
  check_throws([&] { facesdk::mls(m, v, 2, m, v, 2, dim, nullptr); }, "out is null", "mls null out");
  check_throws([&] { facesdk::mls_topk(m, v, 2, m, v, 2, dim, 0, idx.data(), out.data()); }, "k must be", "mls_topk k 0");
  check_throws([&] { facesdk::mls_match(m, v, 2, m, v, 2, dim, std::nanf("")); }, "threshold", "mls_match NaN threshold");
  for (const float bad : {0.f, -1.f, 1e-40f, 1e38f, std::numeric_limits<float>::infinity(), std::nanf("")}) {
    std::vector<float> s_bad = s;
    s_bad[dim + 2] = bad;  // row 1
    check_throws([&] { facesdk::mls(m, v, 2, m, s_bad.data(), 2, dim, out.data()); }, "G_s (gallery sigma^2) row 1",
                 "bad gallery variance " + std::to_string(bad));
    check_throws([&] { facesdk::mls(m, s_bad.data(), 2, m, v, 2, dim, out.data()); }, "Q_s (query sigma^2) row 1",
                 "bad query variance " + std::to_string(bad));
    check_throws([&] { facesdk::mls_topk(m, v, 0, m, s_bad.data(), 2, dim, 1, idx.data(), out.data()); }, "G_s",
                 "bad gallery variance with no queries");
  }
  std::vector<float> mu_bad = mu;
  mu_bad[dim + 1] = std::numeric_limits<float>::infinity();
  check_throws([&] { facesdk::mls_match(m, v, 2, mu_bad.data(), v, 2, dim, 0.f); }, "G_mu (gallery mu) row 1", "Inf in G_mu");
  check_throws([&] { facesdk::mls_match(mu_bad.data(), v, 2, m, v, 2, dim, 0.f); }, "Q_mu (query mu) row 1", "Inf in Q_mu");
}

}  // namespace

// Compressed galleries: topk and match equal the float32 calls bit for bit, with
// exact_rows reading the float32 rows; the error bound holds.
void test_compressed(const std::string& isa, std::size_t nq, std::size_t ng, std::size_t dim) {
  std::mt19937 rng(unsigned(nq * 131 + ng * 7 + dim));
  std::vector<float> Q = random_rows(rng, nq, dim), G = random_rows(rng, ng, dim);
  for (std::size_t i = 0; i < nq && ng > 0; i += 2)  // every other query near a gallery row
    for (std::size_t d = 0; d < dim; ++d) Q[i * dim + d] = G[(i % ng) * dim + d] + 0.05f * Q[i * dim + d];
  const facesdk::ExactRows exact = [&](const std::int64_t* rows, std::size_t n, float* out) {
    for (std::size_t r = 0; r < n; ++r) std::copy_n(G.data() + rows[r] * dim, dim, out + r * dim);
  };
  const std::string what = isa + " nq=" + std::to_string(nq) + " ng=" + std::to_string(ng) + " dim=" + std::to_string(dim);
  for (const facesdk::Precision p : {facesdk::Precision::fp16, facesdk::Precision::int8}) {
    const std::string name = what + (p == facesdk::Precision::fp16 ? " fp16" : " int8");
    std::vector<std::uint16_t> half(ng * dim);
    std::vector<std::int8_t> codes(ng * dim);
    std::vector<float> scale(ng), error(ng), norm(ng);
    const facesdk::CompressionBounds b =
        p == facesdk::Precision::fp16
            ? facesdk::compress_fp16(G.data(), ng, dim, half.data(), error.data(), norm.data())
            : facesdk::compress_int8(G.data(), ng, dim, codes.data(), scale.data(), error.data(), norm.data());
    bool bounded = true;
    for (std::size_t j = 0; j < ng; ++j) bounded = bounded && error[j] <= b.max_error;
    check(bounded, name + ": error <= max_error");
    const facesdk::CompressedGallery C{p, p == facesdk::Precision::fp16 ? static_cast<const void*>(half.data()) : codes.data(),
                                       scale.data(), error.data(), norm.data(), ng, dim, b.max_error, b.max_norm};
    for (const std::size_t k : {std::size_t(1), std::size_t(5)}) {
      std::vector<std::int64_t> idx(nq * k), ref_idx(nq * k);
      std::vector<float> dist(nq * k), ref_dist(nq * k);
      facesdk::topk(Q.data(), nq, C, exact, k, idx.data(), dist.data());
      facesdk::topk(Q.data(), nq, G.data(), ng, dim, k, ref_idx.data(), ref_dist.data());
      check(idx == ref_idx && std::memcmp(dist.data(), ref_dist.data(), dist.size() * sizeof(float)) == 0,
            name + " topk k=" + std::to_string(k) + " equals float32");
    }
    for (const float t : {0.f, 50.f, 250.f, std::numeric_limits<float>::infinity()}) {
      const facesdk::Matches m = facesdk::match(Q.data(), nq, C, exact, t);
      const facesdk::Matches r = facesdk::match(Q.data(), nq, G.data(), ng, dim, t);
      check(m.query == r.query && m.gallery == r.gallery && m.distance == r.distance,
            name + " match t=" + std::to_string(t) + " equals float32");
    }
  }
}

void test_compressed_errors() {
  const std::vector<float> bad{1.f, std::nanf(""), 1e5f, 0.f};
  std::vector<std::uint16_t> half(4);
  std::vector<std::int8_t> codes(4);
  std::vector<float> scale(4), error(4), norm(4);
  check_throws([&] { facesdk::compress_int8(bad.data(), 2, 2, codes.data(), scale.data(), error.data(), norm.data()); },
               "G row 0", "int8 NaN row");
  check_throws([&] { facesdk::compress_fp16(bad.data() + 2, 1, 2, half.data(), error.data(), norm.data()); },
               "fp16's range", "fp16 out of range");
  const facesdk::CompressedGallery C{facesdk::Precision::int8, codes.data(), scale.data(), error.data(), norm.data(),
                                     2, 2, 0.f, 1.f};
  std::int64_t idx;
  float dist;
  check_throws([&] { facesdk::topk(bad.data(), 1, C, nullptr, 1, &idx, &dist); }, "exact_rows", "no exact_rows");
}

int main() {
  const std::string initial = facesdk::isa();
  for (const std::string& isa : facesdk::available_isas()) {
    facesdk::set_isa(isa);
    for (const auto& s : std::vector<std::vector<std::size_t>>{
             {0, 4, 8}, {4, 0, 8}, {1, 1, 1}, {1, 100, 127}, {2, 65, 128}, {9, 70, 3}, {30, 300, 128}, {5, 40, 512}})
      test_shape(isa, s[0], s[1], s[2]);
  }
  for (const std::string& isa : facesdk::available_isas()) {
    facesdk::set_isa(isa);
    for (const float scale : {1e-3f, 1.f, 1e-30f, 1e30f})
      for (const auto& s : std::vector<std::vector<std::size_t>>{
               {0, 4, 8}, {4, 0, 8}, {1, 1, 1}, {1, 100, 127}, {2, 65, 128}, {9, 70, 3}, {5, 40, 512}})
        test_mls_shape(isa, s[0], s[1], s[2], scale);
    test_mls_shape(isa, 30, 300, 128, 0.1f);
    test_mls_known_value();
    test_mls_threads_do_not_change_results();
    test_mls_ties_and_padding();
    test_mls_extremes();
  }
  for (const std::string& isa : facesdk::available_isas()) {
    facesdk::set_isa(isa);
    for (const auto& s : std::vector<std::vector<std::size_t>>{{0, 4, 8}, {4, 0, 8}, {1, 1, 1}, {1, 100, 127}, {2, 65, 128},
                                                               {9, 70, 3}, {30, 3000, 128}})
      test_compressed(isa, s[0], s[1], s[2]);
  }
  facesdk::set_isa(initial);
  test_compressed_errors();
  test_mls_errors();
  test_errors();
  test_short_gallery_pads();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
