// dlib's shape predictor: per cascade, read the feature pixels placed relative
// to the current shape, walk every tree on pixel differences, add the leaves.
// Float arithmetic follows dlib's order term by term (the build has
// -ffp-contract=off), so the points match dlib's before its final rounding.
//
// In a frame the model (9 MB packed, for the 5-point one) is out of the core's
// caches, and a tree's walk is a chain of dependent loads. So each cascade walks
// all its trees a level at a time (the steps of a level are independent, and a
// level's nodes lie together), prefetches the leaf each tree ends in, and only
// then adds the leaves, in tree order.
#include <algorithm>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "facesdk/kernels.h"

namespace facesdk {
namespace {

using std::size_t;

struct Split {
  std::uint16_t a, b;  // feature pixels: left when value a - value b > threshold
  float threshold;
};
struct Feature {
  float dx, dy;          // offset from the anchor landmark (mean shape)
  std::uint32_t anchor;  // 2 * landmark: the anchor's x in the shape
};
struct alignas(64) Line {  // one cache line of a leaf row
  float v[16];
};

// Zeroed memory in 2 MB pages where Linux grants them (transparent huge pages in madvise
// mode): a prediction reads a few bytes from each of thousands of 4 KB pages, whose TLB
// entries a frame's other work has evicted.
class HugeBuffer {
 public:
  static constexpr size_t kPage = size_t(2) << 20;
  explicit HugeBuffer(size_t bytes) : bytes_((bytes + kPage - 1) / kPage * kPage) {
    data_ = std::aligned_alloc(kPage, bytes_);
    if (!data_) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(data_, bytes_, MADV_HUGEPAGE);  // a hint: refused, the pages stay 4 KB
#endif
    std::fill_n(static_cast<char*>(data_), bytes_, 0);
  }
  ~HugeBuffer() { std::free(data_); }
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;
  char* data() const { return static_cast<char*>(data_); }

 private:
  size_t bytes_;
  void* data_;
};

size_t round_up(size_t bytes) { return (bytes + 63) / 64 * 64; }

// Level of node n of a tree stored breadth first (the root is 0).
size_t level_of(size_t n) {
  size_t level = 0;
  while (((size_t(2) << level) - 1) <= n) ++level;
  return level;
}

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

struct ShapePredictor::Packed {
  size_t parts, cascades, trees, depth, pixels, lines_per_leaf;
  std::vector<float> initial;
  HugeBuffer memory;
  Feature* features;  // [C * F]
  Split* splits;      // [C][level L][T][2^L]
  Line* leaves;       // [C][T][2^depth][lines_per_leaf]

  Packed(const ShapeModelView& m, size_t splits_per_tree, size_t lines)
      : parts(m.parts), cascades(m.cascades), trees(m.trees), depth(m.depth), pixels(m.pixels),
        lines_per_leaf(lines), initial(m.initial, m.initial + 2 * m.parts),
        memory(feature_bytes(m) + split_bytes(m, splits_per_tree) + leaf_bytes(m, splits_per_tree, lines)),
        features(reinterpret_cast<Feature*>(memory.data())),
        splits(reinterpret_cast<Split*>(memory.data() + feature_bytes(m))),
        leaves(reinterpret_cast<Line*>(memory.data() + feature_bytes(m) + split_bytes(m, splits_per_tree))) {}

  static size_t feature_bytes(const ShapeModelView& m) { return round_up(m.cascades * m.pixels * sizeof(Feature)); }
  static size_t split_bytes(const ShapeModelView& m, size_t s) { return round_up(m.cascades * m.trees * s * sizeof(Split)); }
  static size_t leaf_bytes(const ShapeModelView& m, size_t s, size_t lines) {
    return m.cascades * m.trees * (s + 1) * lines * sizeof(Line);
  }
};

ShapePredictor::ShapePredictor(const ShapeModelView& m) {
  if (m.parts == 0 || m.cascades == 0 || m.trees == 0 || m.depth == 0 || m.depth > 30 || m.pixels == 0)
    throw std::invalid_argument("bad model sizes");
  if (m.pixels > kMaxFeaturePixels)
    throw std::invalid_argument("the model has " + std::to_string(m.pixels) + " feature pixels, more than " +
                                std::to_string(kMaxFeaturePixels));
  const size_t splits = (size_t(1) << m.depth) - 1, dims = 2 * m.parts, lines = (dims + 15) / 16;
  auto p = std::make_shared<Packed>(m, splits, lines);
  for (size_t i = 0; i < m.cascades * m.pixels; ++i) {
    const std::int32_t k = m.anchors[i];
    if (k < 0 || size_t(k) >= m.parts) throw std::invalid_argument("anchor landmark out of range");
    p->features[i] = {m.deltas[2 * i], m.deltas[2 * i + 1], std::uint32_t(2 * k)};
  }
  for (size_t c = 0; c < m.cascades; ++c)
    for (size_t t = 0; t < m.trees; ++t)
      for (size_t n = 0; n < splits; ++n) {  // n: breadth first, as dlib stores a tree
        const size_t from = (c * m.trees + t) * splits + n;
        const std::int32_t a = m.split_a[from], b = m.split_b[from];
        if (a < 0 || b < 0 || size_t(a) >= m.pixels || size_t(b) >= m.pixels)
          throw std::invalid_argument("split feature index out of range");
        const size_t first = (size_t(1) << level_of(n)) - 1;  // the level's first n: 2^L - 1
        p->splits[c * m.trees * splits + first * m.trees + t * (first + 1) + (n - first)] = {
            std::uint16_t(a), std::uint16_t(b), m.thresholds[from]};
      }
  for (size_t r = 0; r < m.cascades * m.trees * (splits + 1); ++r)
    std::copy(m.leaves + r * dims, m.leaves + (r + 1) * dims, p->leaves[r * lines].v);
  packed_ = std::move(p);
}

size_t ShapePredictor::parts() const { return packed_->parts; }

void ShapePredictor::predict(const std::uint8_t* image, size_t rows, size_t cols, size_t channels,
                             const double box[4], double* out) const {
  if (!image || rows == 0 || cols == 0 || channels == 0) throw std::invalid_argument("image is empty");
  const Packed& p = *packed_;
  const size_t splits = (size_t(1) << p.depth) - 1, lines = p.lines_per_leaf;
  // The unit square's corners are the box's first and last pixels.
  const double x0 = box[0], y0 = box[1], sx = box[2] - 1 - box[0], sy = box[3] - 1 - box[1];
  // The shape padded to whole leaf rows: a tree adds 16 lanes at a time, the padding adds zeros.
  std::vector<Line> padded(lines, Line{});
  float* shape = padded[0].v;
  std::copy(p.initial.begin(), p.initial.end(), shape);
  std::vector<float> values(p.pixels);
  std::vector<std::int64_t> offset(p.pixels);
  std::vector<std::uint32_t> node(p.trees);
  for (size_t c = 0; c < p.cascades; ++c) {
    float m[4];
    similarity(p.initial.data(), shape, p.parts, m);
    const Feature* features = p.features + c * p.pixels;
    // Where each feature pixel is (-1: outside the image), then the reads: the first loop has
    // no branch, and the reads of the second do not wait on each other's arithmetic.
    for (size_t i = 0; i < p.pixels; ++i) {
      const Feature& f = features[i];
      const float px = m[0] * f.dx + m[1] * f.dy + shape[f.anchor];
      const float py = m[2] * f.dx + m[3] * f.dy + shape[f.anchor + 1];
      // Nearest pixel, rounding half up; 0 outside the image, as dlib reads it. Checked in
      // double before the (then exact) truncation, which is std::floor for x >= 0.
      const double x = x0 + sx * double(px) + 0.5, y = y0 + sy * double(py) + 0.5;
      const bool inside = (x >= 0) & (y >= 0) & (x < double(cols)) & (y < double(rows));
      offset[i] = inside ? std::int64_t(y) * std::int64_t(cols) + std::int64_t(x) : -1;
    }
    for (size_t i = 0; i < p.pixels; ++i) {
      float v = 0;
      if (offset[i] >= 0) {
        const std::uint8_t* px = image + size_t(offset[i]) * channels;
        v = channels >= 3 ? float((unsigned(px[0]) + unsigned(px[1]) + unsigned(px[2])) / 3) : float(px[0]);
      }
      values[i] = v;
    }
    // Every tree a level at a time; node[t]: the index within the level.
    const Split* level = p.splits + c * p.trees * splits;
    std::fill(node.begin(), node.end(), 0);
    for (size_t d = 0, width = 1; d < p.depth; ++d, level += p.trees * width, width *= 2) {
      for (size_t t = 0; t < p.trees; ++t) {
        const Split& s = level[t * width + node[t]];
        // Left (2i) when the difference exceeds the threshold; branch-free, as the outcome is
        // unpredictable.
        node[t] = 2 * node[t] + 1 - std::uint32_t(values[s.a] - values[s.b] > s.threshold);
      }
    }
    const Line* tree_leaves = p.leaves + c * p.trees * (splits + 1) * lines;
    auto leaf = [&](size_t t) { return tree_leaves + (t * (splits + 1) + node[t]) * lines; };
    for (size_t t = 0; t < p.trees; ++t) prefetch(leaf(t));
    // The leaves are added in tree order, as dlib adds them.
    for (size_t t = 0; t < p.trees; ++t) {
      const Line* row = leaf(t);
      for (size_t l = 0; l < lines; ++l)
        for (size_t j = 0; j < 16; ++j) padded[l].v[j] += row[l].v[j];
    }
  }
  for (size_t i = 0; i < p.parts; ++i) {
    out[2 * i] = x0 + sx * double(shape[2 * i]);
    out[2 * i + 1] = y0 + sy * double(shape[2 * i + 1]);
  }
}

}  // namespace facesdk
