// dlib's shape predictor: per cascade, read the feature pixels placed relative
// to the current shape, walk every tree on pixel differences, add the leaves.
// Float arithmetic follows dlib's order term by term (the build has
// -ffp-contract=off), so the points match dlib's before its final rounding.
//
// In a frame the model (6 MB for the 5-point one) is mostly out of cache, and a
// tree's walk is a chain of dependent loads. So each cascade first walks all its
// trees a level at a time (every step independent of the others), prefetching
// the leaf each tree ends in, and only then adds the leaves, in tree order.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "facesdk/kernels.h"

namespace facesdk {
namespace {

using std::size_t;

// Scale-rotation [a -b; b a] of the least-squares similarity from `from` to `to`
// (P points each). dlib solves it with Umeyama's SVD; in 2-D this closed form
// is the same transform. Double, then rounded to float as dlib does.
void similarity(const float* from, const float* to, size_t parts, float m[4]) {
  double fx = 0, fy = 0, tx = 0, ty = 0;
  for (size_t i = 0; i < parts; ++i) {
    fx += from[2 * i];
    fy += from[2 * i + 1];
    tx += to[2 * i];
    ty += to[2 * i + 1];
  }
  fx /= double(parts), fy /= double(parts), tx /= double(parts), ty /= double(parts);
  double spread = 0, dot = 0, cross = 0;
  for (size_t i = 0; i < parts; ++i) {
    const double ux = from[2 * i] - fx, uy = from[2 * i + 1] - fy;
    const double vx = to[2 * i] - tx, vy = to[2 * i + 1] - ty;
    spread += ux * ux + uy * uy;
    dot += ux * vx + uy * vy;
    cross += ux * vy - uy * vx;
  }
  const double a = spread > 0 ? dot / spread : 1.0, b = spread > 0 ? cross / spread : 0.0;
  m[0] = float(a), m[1] = float(-b), m[2] = float(b), m[3] = float(a);
}

inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p);
#endif
}

}  // namespace

ShapePredictor::ShapePredictor(const ShapeModelView& m)
    : parts_(m.parts), cascades_(m.cascades), trees_(m.trees), depth_(m.depth), pixels_(m.pixels) {
  if (m.parts == 0 || m.cascades == 0 || m.trees == 0 || m.depth == 0 || m.depth > 30 || m.pixels == 0)
    throw std::invalid_argument("bad model sizes");
  if (m.pixels > kMaxFeaturePixels)
    throw std::invalid_argument("the model has " + std::to_string(m.pixels) + " feature pixels, more than " +
                                std::to_string(kMaxFeaturePixels));
  const size_t splits = (size_t(1) << m.depth) - 1, dims = 2 * m.parts;
  initial_.assign(m.initial, m.initial + dims);
  features_.resize(m.cascades * m.pixels);
  for (size_t i = 0; i < features_.size(); ++i) {
    const std::int32_t k = m.anchors[i];
    if (k < 0 || size_t(k) >= m.parts) throw std::invalid_argument("anchor landmark out of range");
    features_[i] = {m.deltas[2 * i], m.deltas[2 * i + 1], std::uint32_t(2 * k)};
  }
  splits_.resize(m.cascades * m.trees * splits);
  for (size_t i = 0; i < splits_.size(); ++i) {
    const std::int32_t a = m.split_a[i], b = m.split_b[i];
    if (a < 0 || b < 0 || size_t(a) >= m.pixels || size_t(b) >= m.pixels)
      throw std::invalid_argument("split feature index out of range");
    splits_[i] = {std::uint16_t(a), std::uint16_t(b), m.thresholds[i]};
  }
  lines_per_leaf_ = (dims + 15) / 16;
  const size_t rows = m.cascades * m.trees * (splits + 1);
  leaves_.assign(rows * lines_per_leaf_, Line{});
  for (size_t r = 0; r < rows; ++r)
    std::copy(m.leaves + r * dims, m.leaves + (r + 1) * dims, leaves_[r * lines_per_leaf_].v);
}

void ShapePredictor::predict(const std::uint8_t* image, size_t rows, size_t cols, size_t channels,
                             const double box[4], double* out) const {
  if (!image || rows == 0 || cols == 0 || channels == 0) throw std::invalid_argument("image is empty");
  const size_t splits = (size_t(1) << depth_) - 1;
  // The unit square's corners are the box's first and last pixels.
  const double x0 = box[0], y0 = box[1], sx = box[2] - 1 - box[0], sy = box[3] - 1 - box[1];
  // The shape padded to whole leaf rows: a tree adds 16 lanes at a time, the padding adds zeros.
  std::vector<Line> padded(lines_per_leaf_, Line{});
  float* shape = padded[0].v;
  std::copy(initial_.begin(), initial_.end(), shape);
  std::vector<float> values(pixels_);
  std::vector<std::int64_t> offset(pixels_);
  std::vector<std::uint32_t> node(trees_);
  for (size_t c = 0; c < cascades_; ++c) {
    float m[4];
    similarity(initial_.data(), shape, parts_, m);
    const Feature* features = features_.data() + c * pixels_;
    // Where each feature pixel is (-1: outside the image), then the reads: the first loop has
    // no branch, and the reads of the second do not wait on each other's arithmetic.
    for (size_t i = 0; i < pixels_; ++i) {
      const Feature& f = features[i];
      const float px = m[0] * f.dx + m[1] * f.dy + shape[f.anchor];
      const float py = m[2] * f.dx + m[3] * f.dy + shape[f.anchor + 1];
      // Nearest pixel, rounding half up; 0 outside the image, as dlib reads it. Checked in
      // double before the (then exact) truncation, which is std::floor for x >= 0.
      const double x = x0 + sx * double(px) + 0.5, y = y0 + sy * double(py) + 0.5;
      const bool inside = (x >= 0) & (y >= 0) & (x < double(cols)) & (y < double(rows));
      offset[i] = inside ? std::int64_t(y) * std::int64_t(cols) + std::int64_t(x) : -1;
    }
    for (size_t i = 0; i < pixels_; ++i) {
      float v = 0;
      if (offset[i] >= 0) {
        const std::uint8_t* p = image + size_t(offset[i]) * channels;
        v = channels >= 3 ? float((unsigned(p[0]) + unsigned(p[1]) + unsigned(p[2])) / 3) : float(p[0]);
      }
      values[i] = v;
    }
    // Every tree one level at a time: the steps of one level are independent, so they overlap.
    const Split* tree_splits = splits_.data() + c * trees_ * splits;
    std::fill(node.begin(), node.end(), 0);
    for (size_t level = 0; level < depth_; ++level) {
      for (size_t t = 0; t < trees_; ++t) {
        const Split& s = tree_splits[t * splits + node[t]];
        // Left (2n + 1) when the difference exceeds the threshold; branch-free, as the
        // outcome is unpredictable.
        node[t] = 2 * node[t] + 2 - std::uint32_t(values[s.a] - values[s.b] > s.threshold);
      }
    }
    const Line* tree_leaves = leaves_.data() + c * trees_ * (splits + 1) * lines_per_leaf_;
    auto leaf = [&](size_t t) { return tree_leaves + (t * (splits + 1) + node[t] - splits) * lines_per_leaf_; };
    for (size_t t = 0; t < trees_; ++t) prefetch(leaf(t));
    // The leaves are added in tree order, as dlib adds them.
    for (size_t t = 0; t < trees_; ++t) {
      const Line* row = leaf(t);
      for (size_t l = 0; l < lines_per_leaf_; ++l)
        for (size_t j = 0; j < 16; ++j) padded[l].v[j] += row[l].v[j];
    }
  }
  for (size_t i = 0; i < parts_; ++i) {
    out[2 * i] = x0 + sx * double(shape[2 * i]);
    out[2 * i + 1] = y0 + sy * double(shape[2 * i + 1]);
  }
}

}  // namespace facesdk
