// C++ test of the kernel library through its public header only: every
// instruction set the CPU runs against a double-precision reference, the
// argument checks, and the documented edge cases. No framework; prints
// "N passed, M failed" and exits non-zero on any failure.
#include <facesdk/kernels.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
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

}  // namespace

int main() {
  const std::string initial = facesdk::isa();
  for (const std::string& isa : facesdk::available_isas()) {
    facesdk::set_isa(isa);
    for (const auto& s : std::vector<std::vector<std::size_t>>{
             {0, 4, 8}, {4, 0, 8}, {1, 1, 1}, {1, 100, 127}, {2, 65, 128}, {9, 70, 3}, {30, 300, 128}, {5, 40, 512}})
      test_shape(isa, s[0], s[1], s[2]);
  }
  facesdk::set_isa(initial);
  test_errors();
  test_short_gallery_pads();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
