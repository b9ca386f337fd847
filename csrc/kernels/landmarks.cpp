// dlib's shape predictor: per cascade, read the feature pixels placed relative
// to the current shape, walk every tree on pixel differences, add the leaves.
// Float arithmetic follows dlib's order term by term (the build has
// -ffp-contract=off), so the points match dlib's before its final rounding.
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

}  // namespace

void shape_predict(const ShapeModelView& model, const std::uint8_t* image, size_t rows, size_t cols,
                   size_t channels, const double box[4], double* out) {
  if (!image || rows == 0 || cols == 0 || channels == 0) throw std::invalid_argument("image is empty");
  if (model.parts == 0 || model.depth == 0 || model.depth > 30) throw std::invalid_argument("bad model sizes");
  const size_t parts = model.parts, splits = (size_t(1) << model.depth) - 1, dims = 2 * parts;
  // The unit square's corners are the box's first and last pixels.
  const double x0 = box[0], y0 = box[1], sx = box[2] - 1 - box[0], sy = box[3] - 1 - box[1];
  std::vector<float> shape(model.initial, model.initial + dims);
  std::vector<float> values(model.pixels);
  for (size_t c = 0; c < model.cascades; ++c) {
    float m[4];
    similarity(model.initial, shape.data(), parts, m);
    const std::int32_t* anchors = model.anchors + c * model.pixels;
    const float* deltas = model.deltas + 2 * c * model.pixels;
    for (size_t i = 0; i < model.pixels; ++i) {
      const std::int32_t k = anchors[i];
      if (k < 0 || size_t(k) >= parts) throw std::invalid_argument("anchor landmark out of range");
      const float dx = deltas[2 * i], dy = deltas[2 * i + 1];
      const float px = m[0] * dx + m[1] * dy + shape[2 * k];
      const float py = m[2] * dx + m[3] * dy + shape[2 * k + 1];
      // Nearest pixel, rounding half up; 0 outside the image, as dlib reads it. Checked in
      // double before the (then exact) truncation, which is std::floor for x >= 0.
      const double x = x0 + sx * double(px) + 0.5, y = y0 + sy * double(py) + 0.5;
      float v = 0;
      if (x >= 0 && y >= 0 && x < double(cols) && y < double(rows)) {
        const std::uint8_t* p = image + (size_t(y) * cols + size_t(x)) * channels;
        v = channels >= 3 ? float((unsigned(p[0]) + unsigned(p[1]) + unsigned(p[2])) / 3) : float(p[0]);
      }
      values[i] = v;
    }
    // Trees in groups whose walks interleave (each walk is a chain of dependent loads);
    // their leaves are then added in tree order, as dlib adds them.
    constexpr size_t kGroup = 8;
    for (size_t t0 = 0; t0 < model.trees; t0 += kGroup) {
      const size_t group = std::min(kGroup, model.trees - t0);
      size_t node[kGroup] = {};
      for (size_t level = 0; level < model.depth; ++level) {
        for (size_t g = 0; g < group; ++g) {
          const size_t at = (c * model.trees + t0 + g) * splits + node[g];
          const std::int32_t a = model.split_a[at], b = model.split_b[at];
          if (a < 0 || b < 0 || size_t(a) >= model.pixels || size_t(b) >= model.pixels)
            throw std::invalid_argument("split feature index out of range");
          // Left (2n + 1) when the difference exceeds the threshold; branch-free, as the
          // outcome is unpredictable.
          node[g] = 2 * node[g] + 2 - size_t(values[a] - values[b] > model.thresholds[at]);
        }
      }
      for (size_t g = 0; g < group; ++g) {
        const float* leaf = model.leaves + ((c * model.trees + t0 + g) * (splits + 1) + node[g] - splits) * dims;
        for (size_t j = 0; j < dims; ++j) shape[j] += leaf[j];
      }
    }
  }
  for (size_t i = 0; i < parts; ++i) {
    out[2 * i] = x0 + sx * double(shape[2 * i]);
    out[2 * i + 1] = y0 + sy * double(shape[2 * i + 1]);
  }
}

}  // namespace facesdk
