// facesdk kernels: batched squared-L2 distances, threshold matching and top-k
// (over float32, fp16 and int8 galleries), and the same three calls for the
// mutual likelihood score of Probabilistic Face Embeddings (PFE).
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
#include <functional>
#include <memory>
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

// ---- Compressed galleries: fp16 and int8 rows, decisions as float32's -------
//
// A gallery stored in half (fp16) or a quarter (int8) of the float32 bytes,
// scanned by the same kernels: each tile of rows is widened to float32 in cache
// and measured as a float32 gallery would be. The scan keeps every row that
// could belong to the float32 answer (the error bound below), then
// `exact_rows` supplies those rows' float32 values (from wherever the firmware
// keeps them: a file, flash) and they are measured by the float32 kernels
// themselves. So topk and match return exactly what the float32 calls return
// on the float32 gallery for the same batch of queries: the same rows, the same
// distance bits, the same ties.
//
// fp16: IEEE binary16, round to nearest even. int8: per row a scale
// s = max_d |g_d| / 127 and codes c_d = round(g_d / s) in [-127, 127]
// (symmetric: embedding components are centred on 0, and with no zero point
// the widened row is exactly float(c_d) * s).
//
// Error bound. error[j] >= |g_j - w_j| (w_j: the widened row), so by the
// triangle inequality | |q - g_j| - |q - w_j| | <= error[j] for any query.
// Every float32 squared distance the kernels compute (of g_j or of w_j) is
// within c = (2 dim + 16) 2^-24 (|q| + max_norm)^2 of the exact one. A row is
// a candidate when its lower bound (sqrt(d_w - c) - error[j])^2 - c does not
// exceed the k-th smallest upper bound (sqrt(d_w + c) + error[j])^2 + c (top-k)
// or the threshold (match); every other row is provably outside the float32
// answer. Typical errors on unit embeddings (D = 128): fp16 |g - w| ~ 2e-4,
// int8 ~ 7e-3 (docs/compressed_galleries.md has the measured figures).
enum class Precision { fp16, int8 };

// A view of a compressed gallery as compress_fp16 / compress_int8 wrote it.
struct CompressedGallery {
  Precision precision;
  const void* codes;    // fp16: std::uint16_t [ng * dim]; int8: std::int8_t [ng * dim]
  const float* scale;   // int8: [ng], one per row; fp16: unused (may be null)
  const float* error;   // [ng]: >= |g_j - w_j|
  const float* norm;    // [ng]: |w_j|^2 (to float precision), so a query or two skips it
  std::size_t ng, dim;
  float max_error;      // >= every error[j]
  float max_norm;       // >= |w_j| + error[j] (so >= |g_j|) for every row
};

// What compress_* returns, for CompressedGallery's two bounds. Galleries
// compressed in parts combine by taking the maxima.
struct CompressionBounds {
  float max_error, max_norm;
};

// Compress ng float32 rows (each finite; fp16: every |value| <= 65504, the
// largest half) into codes [ng * dim], error [ng], norm [ng] (and scale [ng]
// for int8).
CompressionBounds compress_fp16(const float* G, std::size_t ng, std::size_t dim, std::uint16_t* codes,
                                float* error, float* norm);
CompressionBounds compress_int8(const float* G, std::size_t ng, std::size_t dim, std::int8_t* codes,
                                float* scale, float* error, float* norm);

// Supplies the float32 rows `rows[0..n)` (ascending, distinct) into out [n * dim].
// Called once per topk / match call, on the calling thread, after the scan.
using ExactRows = std::function<void(const std::int64_t* rows, std::size_t n, float* out)>;

// topk / match of the float32 API over a compressed gallery: the same results,
// bit for bit, as on the float32 rows exact_rows supplies.
void topk(const float* Q, std::size_t nq, const CompressedGallery& G, const ExactRows& exact_rows,
          std::size_t k, std::int64_t* idx, float* dist);
Matches match(const float* Q, std::size_t nq, const CompressedGallery& G, const ExactRows& exact_rows,
              float threshold);

// ---- Mutual likelihood score (PFE, Shi & Jain, ICCV 2019) ----------------
//
// Each face is a Gaussian N(mu, diag(s)), s = sigma^2 per dimension. For two
// faces, higher = more likely the same person:
//
//   MLS = -1/2 sum_d [ (mu1_d - mu2_d)^2 / (s1_d + s2_d) + log(s1_d + s2_d) ]
//         - (D/2) log(2 pi)
//
// Inputs: Q_mu, Q_s [nq x dim], G_mu, G_s [ng x dim], float32 row-major. Every
// mu must be finite and every s in [kMlsMinVariance, kMlsMaxVariance] (the
// positive normal floats for which s1 + s2 stays finite and normal); any other
// value throws std::invalid_argument naming the array and the row.
//
// The log is never taken per dimension: log(s1 + s2) is split into its binary
// exponent (summed exactly as integers) and its mantissa in [1, 2) (multiplied
// into a running product), and one log per pair of that product finishes the
// sum (a Cephes-style polynomial in the AVX2 / AVX-512 kernels, std::log in
// the portable one). Accuracy against the exact score of the float32 inputs:
//
//   |score - exact| <= (ceil(D / 8) + 16) * 2^-24 * R,
//   R = sum_d [ (mu1_d - mu2_d)^2 / (s1_d + s2_d) + |log(s1_d + s2_d)| ] + (D/2) log(2 pi)
//
// (R >= |score|; measured: under 2 * 2^-24 * R on random and extreme inputs).
// Where sum_d (mu1_d - mu2_d)^2 / (s1_d + s2_d) overflows float32 (huge mean
// differences over tiny variances; the true score is then below about
// -FLT_MAX / 2) the score is -inf; scores are never NaN.
//
// A pair's score is bit-identical in mls, mls_match and mls_topk, for any
// batch size, gallery split and number of threads (on one instruction set), and
// symmetric: MLS(a, b) == MLS(b, a) exactly.
inline constexpr float kMlsMinVariance = 0x1p-126f;  // FLT_MIN, ~1.18e-38
inline constexpr float kMlsMaxVariance = 0x1p126f;   // ~8.51e37

// out[i * ng + j] = MLS(Q_i, G_j). `out` holds nq * ng floats.
void mls(const float* Q_mu, const float* Q_s, std::size_t nq, const float* G_mu,
         const float* G_s, std::size_t ng, std::size_t dim, float* out);

// Every pair with MLS >= threshold (any number but NaN), sorted by (query,
// gallery). Never materialises the nq x ng matrix.
struct MlsMatches {
  std::vector<std::int64_t> query;
  std::vector<std::int64_t> gallery;
  std::vector<float> score;
};
MlsMatches mls_match(const float* Q_mu, const float* Q_s, std::size_t nq, const float* G_mu,
                     const float* G_s, std::size_t ng, std::size_t dim, float threshold);

// The k highest-scoring gallery rows of every query, highest first, ties broken
// by the lower gallery index. idx and score hold nq * k values; when k > ng the
// missing entries are idx = -1, score = -inf.
void mls_topk(const float* Q_mu, const float* Q_s, std::size_t nq, const float* G_mu,
              const float* G_s, std::size_t ng, std::size_t dim, std::size_t k,
              std::int64_t* idx, float* score);

// ---- Face landmarks: dlib's shape predictor (Kazemi & Sullivan, CVPR 2014) ----
//
// An ensemble of regression trees as dlib's shape_predictor runs it, on arrays
// read from dlib's own model file (sdk/landmarks.py parses it): C cascades of T
// complete trees of `depth` levels over F feature pixels, P landmarks. Arrays
// are row-major: initial [P*2] (x, y in the box's unit square), anchors [C*F]
// (landmark index), deltas [C*F*2], split_a / split_b [C*T*S] (feature pixel
// indices, S = 2^depth - 1), thresholds [C*T*S], leaves [C*T*(S+1)*P*2].
struct ShapeModelView {
  std::size_t parts, cascades, trees, depth, pixels;
  const float* initial;
  const std::int32_t* anchors;
  const float* deltas;
  const std::int32_t* split_a;
  const std::int32_t* split_b;
  const float* thresholds;
  const float* leaves;
};

// The model packed for prediction: checked once (every index in range, at most
// kMaxFeaturePixels feature pixels, else std::invalid_argument), then copied into
// compact tables (8-byte split nodes, each level of a cascade's trees together;
// leaf rows on cache lines; on Linux in 2 MB pages where the kernel grants them),
// so that a prediction reads few cache lines and pages when the model is not in
// cache, as in a frame after the embedder. Copies share the tables.
class ShapePredictor {
 public:
  static constexpr std::size_t kMaxFeaturePixels = 65536;
  explicit ShapePredictor(const ShapeModelView& model);
  std::size_t parts() const;

  // Landmarks of the face in box (x1, y1, x2, y2), x2 and y2 one past the last
  // pixel, on a uint8 image [rows x cols x channels] (row-major, contiguous);
  // channels >= 3 read as (c0 + c1 + c2) / 3 (dlib's gray). out: P*2 doubles
  // (x, y image pixels, before dlib's rounding to integers). Bit-exact with dlib
  // up to that rounding. Thread-safe.
  void predict(const std::uint8_t* image, std::size_t rows, std::size_t cols, std::size_t channels,
               const double box[4], double* out) const;

 private:
  struct Packed;  // landmarks.cpp
  std::shared_ptr<const Packed> packed_;
};

// ---- Face chips: dlib's bilinear sampling (extract_image_chip) ----
//
// Fills the chip out [n x n x channels] from image [rows x cols x channels]
// (uint8, row-major, contiguous): chip pixel (c, r) samples image point
// x = mx[0] c + mx[1] r + mx[2], y = my[0] c + my[1] r + my[2], bilinear in
// double, truncated to uint8, and is 0 unless its 4 neighbours lie inside the
// image. Bit-exact with dlib's transform_image for the same map (sdk/align.py).
void sample_chip(const std::uint8_t* image, std::size_t rows, std::size_t cols, std::size_t channels,
                 const double mx[3], const double my[3], std::size_t n, std::uint8_t* out);

// Instruction set of the distance and MLS kernels: "avx512", "avx2" or "generic",
// chosen at load time as the best the CPU supports (the environment variable
// FACESDK_ISA overrides it). set_isa throws for a name this CPU cannot run.
std::string isa();
std::vector<std::string> available_isas();
void set_isa(const std::string& name);

}  // namespace facesdk
