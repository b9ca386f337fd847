// pybind11 bindings of the kernels as sdk._kernels. The typed, documented
// Python API is sdk/kernels.py: it converts inputs to C-contiguous float32,
// so these bindings accept exactly that and never copy silently.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "facesdk/kernels.h"

namespace py = pybind11;

namespace {

using Embeddings = py::array_t<float, py::array::c_style>;

struct Shape {
  std::size_t rows, dim;
};

Shape shape_of(const Embeddings& a, const char* name) {
  if (a.ndim() != 2)
    throw py::value_error(std::string(name) + " must be 2-D [rows, dim], got " + std::to_string(a.ndim()) + "-D");
  return {std::size_t(a.shape(0)), std::size_t(a.shape(1))};
}

std::size_t common_dim(const Shape& q, const Shape& g) {
  if (q.dim != g.dim)
    throw py::value_error("Q and G dims differ: " + std::to_string(q.dim) + " vs " + std::to_string(g.dim));
  return q.dim;
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  return py::array_t<T>(py::ssize_t(v.size()), v.data());
}

py::array_t<float> sq_l2(const Embeddings& Q, const Embeddings& G) {
  const Shape q = shape_of(Q, "Q"), g = shape_of(G, "G");
  const std::size_t dim = common_dim(q, g);
  py::array_t<float> out({q.rows, g.rows});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::sq_l2(Q.data(), q.rows, G.data(), g.rows, dim, o);
  }
  return out;
}

py::tuple match(const Embeddings& Q, const Embeddings& G, float threshold) {
  const Shape q = shape_of(Q, "Q"), g = shape_of(G, "G");
  const std::size_t dim = common_dim(q, g);
  facesdk::Matches m;
  {
    py::gil_scoped_release nogil;
    m = facesdk::match(Q.data(), q.rows, G.data(), g.rows, dim, threshold);
  }
  return py::make_tuple(to_numpy(m.query), to_numpy(m.gallery), to_numpy(m.distance));
}

py::tuple topk(const Embeddings& Q, const Embeddings& G, std::size_t k) {
  const Shape q = shape_of(Q, "Q"), g = shape_of(G, "G");
  const std::size_t dim = common_dim(q, g);
  py::array_t<std::int64_t> idx({q.rows, k});
  py::array_t<float> dist({q.rows, k});
  std::int64_t* i = idx.mutable_data();
  float* d = dist.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::topk(Q.data(), q.rows, G.data(), g.rows, dim, k, i, d);
  }
  return py::make_tuple(idx, dist);
}

// ---- Compressed galleries -------------------------------------------------

// codes [ng, dim] (uint16 bits of fp16, or int8), with scale [ng] (int8) and error [ng].
facesdk::CompressedGallery compressed_view(const std::string& precision, const py::array& codes,
                                           const py::array_t<float, py::array::c_style>& scale,
                                           const py::array_t<float, py::array::c_style>& error,
                                           const py::array_t<float, py::array::c_style>& norm, float max_error,
                                           float max_norm) {
  facesdk::CompressedGallery g{};
  if (precision == "fp16") {
    g.precision = facesdk::Precision::fp16;
    if (!py::isinstance<py::array_t<std::uint16_t>>(codes)) throw py::type_error("fp16 codes must be uint16");
  } else if (precision == "int8") {
    g.precision = facesdk::Precision::int8;
    if (!py::isinstance<py::array_t<std::int8_t>>(codes)) throw py::type_error("int8 codes must be int8");
  } else {
    throw py::value_error("precision must be 'fp16' or 'int8', got '" + precision + "'");
  }
  if (codes.ndim() != 2 || !(codes.flags() & py::array::c_style))
    throw py::value_error("codes must be a C-contiguous 2-D [rows, dim] array");
  g.ng = std::size_t(codes.shape(0));
  g.dim = std::size_t(codes.shape(1));
  if (error.ndim() != 1 || std::size_t(error.shape(0)) != g.ng) throw py::value_error("error must be [rows]");
  if (norm.ndim() != 1 || std::size_t(norm.shape(0)) != g.ng) throw py::value_error("norm must be [rows]");
  if (g.precision == facesdk::Precision::int8 && (scale.ndim() != 1 || std::size_t(scale.shape(0)) != g.ng))
    throw py::value_error("scale must be [rows]");
  g.codes = codes.data();
  g.scale = scale.data();
  g.error = error.data();
  g.norm = norm.data();
  g.max_error = max_error;
  g.max_norm = max_norm;
  return g;
}

py::tuple compress(const Embeddings& G, const std::string& precision) {
  const Shape g = shape_of(G, "G");
  py::array_t<float> error(py::ssize_t(g.rows)), norm(py::ssize_t(g.rows)), scale(py::ssize_t(precision == "int8" ? g.rows : 0));
  py::array codes;
  facesdk::CompressionBounds b{};
  if (precision == "fp16") {
    py::array_t<std::uint16_t> c({g.rows, g.dim});
    std::uint16_t* out = c.mutable_data();
    float *e = error.mutable_data(), *n = norm.mutable_data();
    {
      py::gil_scoped_release nogil;
      b = facesdk::compress_fp16(G.data(), g.rows, g.dim, out, e, n);
    }
    codes = c;
  } else if (precision == "int8") {
    py::array_t<std::int8_t> c({g.rows, g.dim});
    std::int8_t* out = c.mutable_data();
    float *e = error.mutable_data(), *s = scale.mutable_data(), *n = norm.mutable_data();
    {
      py::gil_scoped_release nogil;
      b = facesdk::compress_int8(G.data(), g.rows, g.dim, out, s, e, n);
    }
    codes = c;
  } else {
    throw py::value_error("precision must be 'fp16' or 'int8', got '" + precision + "'");
  }
  return py::make_tuple(codes, scale, error, norm, b.max_error, b.max_norm);
}

// exact_rows(rows: int64 [n]) -> float32 [n, dim], called with the GIL held
// (the scan and the re-rank run without it).
facesdk::ExactRows exact_rows_of(const py::object& exact_rows, std::size_t dim) {
  return [exact_rows, dim](const std::int64_t* rows, std::size_t n, float* out) {
    py::gil_scoped_acquire gil;
    py::object got = exact_rows(py::array_t<std::int64_t>(py::ssize_t(n), rows));
    if (!py::isinstance<py::array_t<float>>(got)) throw py::type_error("exact_rows must return a float32 array");
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(got);
    if (a.ndim() != 2 || std::size_t(a.shape(0)) != n || std::size_t(a.shape(1)) != dim)
      throw py::value_error("exact_rows returned shape [" + std::to_string(a.ndim() ? a.shape(0) : 0) + ", ...]; expected [" +
                            std::to_string(n) + ", " + std::to_string(dim) + "]");
    std::memcpy(out, a.data(), n * dim * sizeof(float));
  };
}

py::tuple compressed_topk(const Embeddings& Q, const std::string& precision, const py::array& codes,
                          const py::array_t<float, py::array::c_style>& scale,
                          const py::array_t<float, py::array::c_style>& error,
                          const py::array_t<float, py::array::c_style>& norm, float max_error, float max_norm,
                          const py::object& exact_rows, std::size_t k) {
  const facesdk::CompressedGallery g = compressed_view(precision, codes, scale, error, norm, max_error, max_norm);
  const Shape q = shape_of(Q, "Q");
  common_dim(q, {g.ng, g.dim});
  const facesdk::ExactRows fetch = exact_rows_of(exact_rows, g.dim);
  py::array_t<std::int64_t> idx({q.rows, k});
  py::array_t<float> dist({q.rows, k});
  std::int64_t* i = idx.mutable_data();
  float* d = dist.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::topk(Q.data(), q.rows, g, fetch, k, i, d);
  }
  return py::make_tuple(idx, dist);
}

py::tuple compressed_match(const Embeddings& Q, const std::string& precision, const py::array& codes,
                           const py::array_t<float, py::array::c_style>& scale,
                           const py::array_t<float, py::array::c_style>& error,
                           const py::array_t<float, py::array::c_style>& norm, float max_error, float max_norm,
                           const py::object& exact_rows, float threshold) {
  const facesdk::CompressedGallery g = compressed_view(precision, codes, scale, error, norm, max_error, max_norm);
  const Shape q = shape_of(Q, "Q");
  common_dim(q, {g.ng, g.dim});
  const facesdk::ExactRows fetch = exact_rows_of(exact_rows, g.dim);
  facesdk::Matches m;
  {
    py::gil_scoped_release nogil;
    m = facesdk::match(Q.data(), q.rows, g, fetch, threshold);
  }
  return py::make_tuple(to_numpy(m.query), to_numpy(m.gallery), to_numpy(m.distance));
}

// MLS inputs: (mu, sigma^2) of the queries and of the gallery, all [rows, dim].
struct GaussianSets {
  Shape q, g;
  std::size_t dim;
};

GaussianSets gaussian_sets(const Embeddings& Q_mu, const Embeddings& Q_s, const Embeddings& G_mu,
                           const Embeddings& G_s) {
  const Shape qm = shape_of(Q_mu, "Q_mu"), qs = shape_of(Q_s, "Q_s");
  const Shape gm = shape_of(G_mu, "G_mu"), gs = shape_of(G_s, "G_s");
  if (qm.rows != qs.rows || qm.dim != qs.dim)
    throw py::value_error("Q_mu and Q_s differ in shape");
  if (gm.rows != gs.rows || gm.dim != gs.dim)
    throw py::value_error("G_mu and G_s differ in shape");
  return {qm, gm, common_dim(qm, gm)};
}

py::array_t<float> mls(const Embeddings& Q_mu, const Embeddings& Q_s, const Embeddings& G_mu,
                       const Embeddings& G_s) {
  const GaussianSets x = gaussian_sets(Q_mu, Q_s, G_mu, G_s);
  py::array_t<float> out({x.q.rows, x.g.rows});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::mls(Q_mu.data(), Q_s.data(), x.q.rows, G_mu.data(), G_s.data(), x.g.rows, x.dim, o);
  }
  return out;
}

py::tuple mls_match(const Embeddings& Q_mu, const Embeddings& Q_s, const Embeddings& G_mu,
                    const Embeddings& G_s, float threshold) {
  const GaussianSets x = gaussian_sets(Q_mu, Q_s, G_mu, G_s);
  facesdk::MlsMatches m;
  {
    py::gil_scoped_release nogil;
    m = facesdk::mls_match(Q_mu.data(), Q_s.data(), x.q.rows, G_mu.data(), G_s.data(), x.g.rows, x.dim,
                           threshold);
  }
  return py::make_tuple(to_numpy(m.query), to_numpy(m.gallery), to_numpy(m.score));
}

py::tuple mls_topk(const Embeddings& Q_mu, const Embeddings& Q_s, const Embeddings& G_mu,
                   const Embeddings& G_s, std::size_t k) {
  const GaussianSets x = gaussian_sets(Q_mu, Q_s, G_mu, G_s);
  py::array_t<std::int64_t> idx({x.q.rows, k});
  py::array_t<float> score({x.q.rows, k});
  std::int64_t* i = idx.mutable_data();
  float* s = score.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::mls_topk(Q_mu.data(), Q_s.data(), x.q.rows, G_mu.data(), G_s.data(), x.g.rows, x.dim, k, i, s);
  }
  return py::make_tuple(idx, score);
}

template <class T>
using Array = py::array_t<T, py::array::c_style>;

// dlib's shape predictor, packed once from sdk/landmarks.py's model arrays (checked for
// size here, for every index by the C++ constructor).
facesdk::ShapePredictor make_shape_predictor(const Array<float>& initial, const Array<std::int32_t>& anchors,
                                             const Array<float>& deltas, const Array<std::int32_t>& split_a,
                                             const Array<std::int32_t>& split_b, const Array<float>& thresholds,
                                             const Array<float>& leaves) {
  if (initial.ndim() != 2 || initial.shape(1) != 2 || anchors.ndim() != 2 || deltas.ndim() != 3 ||
      split_a.ndim() != 3 || leaves.ndim() != 4)
    throw py::value_error("shape model arrays have the wrong number of dimensions");
  facesdk::ShapeModelView m{};
  m.parts = std::size_t(initial.shape(0));
  m.cascades = std::size_t(anchors.shape(0));
  m.pixels = std::size_t(anchors.shape(1));
  m.trees = std::size_t(split_a.shape(1));
  const std::size_t splits = std::size_t(split_a.shape(2));
  while (((std::size_t(1) << m.depth) - 1) < splits) ++m.depth;
  auto same = [](const py::array& a, std::vector<py::ssize_t> shape) {
    return a.ndim() == py::ssize_t(shape.size()) && std::equal(shape.begin(), shape.end(), a.shape());
  };
  const auto C = py::ssize_t(m.cascades), T = py::ssize_t(m.trees), S = py::ssize_t(splits);
  if (((std::size_t(1) << m.depth) - 1) != splits || !same(deltas, {C, py::ssize_t(m.pixels), 2}) ||
      !same(split_a, {C, T, S}) || !same(split_b, {C, T, S}) || !same(thresholds, {C, T, S}) ||
      !same(leaves, {C, T, S + 1, py::ssize_t(2 * m.parts)}))
    throw py::value_error("shape model arrays disagree in size");
  m.initial = initial.data();
  m.anchors = anchors.data();
  m.deltas = deltas.data();
  m.split_a = split_a.data();
  m.split_b = split_b.data();
  m.thresholds = thresholds.data();
  m.leaves = leaves.data();
  return facesdk::ShapePredictor(m);
}

// Landmarks [P, 2] of the face in box (x1, y1, x2, y2) of a uint8 HxW or HxWxC image.
py::array_t<double> shape_predict(const facesdk::ShapePredictor& predictor, const Array<std::uint8_t>& image,
                                  double x1, double y1, double x2, double y2) {
  if (image.ndim() != 2 && image.ndim() != 3) throw py::value_error("image must be HxW or HxWxC uint8");
  const std::size_t channels = image.ndim() == 3 ? std::size_t(image.shape(2)) : 1;
  const double box[4] = {x1, y1, x2, y2};
  py::array_t<double> out({py::ssize_t(predictor.parts()), py::ssize_t(2)});
  double* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    predictor.predict(image.data(), std::size_t(image.shape(0)), std::size_t(image.shape(1)), channels, box, o);
  }
  return out;
}

// dlib's bilinear sampling of an n x n chip through the affine map (mx; my).
py::array_t<std::uint8_t> sample_chip(const Array<std::uint8_t>& image, const std::vector<double>& mx,
                                      const std::vector<double>& my, std::size_t n) {
  if (image.ndim() != 3 || image.shape(0) < 1 || image.shape(1) < 1 || image.shape(2) < 1)
    throw py::value_error("image must be a non-empty HxWxC uint8 array");
  if (mx.size() != 3 || my.size() != 3) throw py::value_error("mx and my must hold 3 coefficients each");
  if (n < 1 || n > 65536) throw py::value_error("chip size must be in [1, 65536]");
  const auto channels = std::size_t(image.shape(2));
  py::array_t<std::uint8_t> out({py::ssize_t(n), py::ssize_t(n), py::ssize_t(channels)});
  std::uint8_t* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    facesdk::sample_chip(image.data(), std::size_t(image.shape(0)), std::size_t(image.shape(1)), channels,
                         mx.data(), my.data(), n, o);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {

  m.doc() =
      "C++ kernels: batched squared-L2 distances, threshold match, top-k, and the same for the "
      "mutual likelihood score of PFE (see sdk.kernels)";
  m.def("sq_l2", &sq_l2, py::arg("Q"), py::arg("G"));
  m.def("match", &match, py::arg("Q"), py::arg("G"), py::arg("threshold"));
  m.def("topk", &topk, py::arg("Q"), py::arg("G"), py::arg("k"));
  m.def("compress", &compress, py::arg("G"), py::arg("precision"));
  m.def("compressed_topk", &compressed_topk, py::arg("Q"), py::arg("precision"), py::arg("codes"), py::arg("scale"),
        py::arg("error"), py::arg("norm"), py::arg("max_error"), py::arg("max_norm"), py::arg("exact_rows"),
        py::arg("k"));
  m.def("compressed_match", &compressed_match, py::arg("Q"), py::arg("precision"), py::arg("codes"),
        py::arg("scale"), py::arg("error"), py::arg("norm"), py::arg("max_error"), py::arg("max_norm"),
        py::arg("exact_rows"), py::arg("threshold"));
  m.def("mls", &mls, py::arg("Q_mu"), py::arg("Q_s"), py::arg("G_mu"), py::arg("G_s"));
  m.def("mls_match", &mls_match, py::arg("Q_mu"), py::arg("Q_s"), py::arg("G_mu"), py::arg("G_s"),
        py::arg("threshold"));
  m.def("mls_topk", &mls_topk, py::arg("Q_mu"), py::arg("Q_s"), py::arg("G_mu"), py::arg("G_s"), py::arg("k"));
  m.attr("MLS_MIN_VARIANCE") = facesdk::kMlsMinVariance;
  m.attr("MLS_MAX_VARIANCE") = facesdk::kMlsMaxVariance;
  py::class_<facesdk::ShapePredictor>(m, "ShapePredictor")
      .def(py::init(&make_shape_predictor), py::arg("initial"), py::arg("anchors"), py::arg("deltas"),
           py::arg("split_a"), py::arg("split_b"), py::arg("thresholds"), py::arg("leaves"))
      .def("predict", &shape_predict, py::arg("image"), py::arg("x1"), py::arg("y1"), py::arg("x2"), py::arg("y2"));
  m.def("sample_chip", &sample_chip, py::arg("image"), py::arg("mx"), py::arg("my"), py::arg("n"));
  m.def("isa", &facesdk::isa);
  m.def("available_isas", &facesdk::available_isas);
  m.def("set_isa", &facesdk::set_isa, py::arg("name"));
}
