"""Builds the C++ extension sdk._kernels (pybind11, C++17, OpenMP).

The micro-kernels (squared L2 and the PFE mutual likelihood score) are compiled
for the x86-64 baseline and, in their own translation units, for AVX2+FMA and
AVX-512; the best one the CPU supports is picked at load time, so one build runs
on any x86-64 (and on aarch64 with the portable kernels). Project metadata lives
in pyproject.toml.
"""

from glob import glob
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("FACESDK_BUILD_JOBS", default=0).install()

# The one list of kernel sources, shared with CMakeLists.txt.
SOURCES = "csrc/kernels/sources.txt"
kernel_sources = [
    line.strip() for line in Path(SOURCES).read_text().splitlines() if line.strip() and not line.startswith("#")
]

kernels = Pybind11Extension(
    "sdk._kernels",
    sources=[*kernel_sources, "csrc/python/module.cpp"],
    include_dirs=["csrc/include"],
    # Headers (and the source list), so that editing one rebuilds the extension.
    depends=sorted(glob("csrc/kernels/*.h") + glob("csrc/include/facesdk/*.h")) + [SOURCES],
    cxx_std=17,
    # -ffp-contract=off: the portable kernels must round every chain the same way.
    extra_compile_args=["-O3", "-fopenmp", "-ffp-contract=off"],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[kernels], cmdclass={"build_ext": build_ext})
