"""The standalone C++ library (CMakeLists.txt): configure, build and run its ctest natively,
and cross-built for aarch64 (Jetson's CPU) run under qemu-user."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import REPO

AARCH64 = [
    "-DCMAKE_SYSTEM_NAME=Linux",
    "-DCMAKE_SYSTEM_PROCESSOR=aarch64",
    "-DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++",
    "-DCMAKE_CROSSCOMPILING_EMULATOR=qemu-aarch64;-L;/usr/aarch64-linux-gnu",
]


def build_and_ctest(build, extra: list[str]) -> str:
    for cmd in (
        ["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", *extra],
        ["cmake", "--build", str(build), "-j", "2"],
        ["ctest", "--test-dir", str(build), "--output-on-failure"],
    ):
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_native_build_and_ctest(tmp_path):
    assert "100% tests passed" in build_and_ctest(tmp_path / "build", [])


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("cmake", "aarch64-linux-gnu-g++", "qemu-aarch64")),
    reason="needs cmake, g++-aarch64-linux-gnu and qemu-user (Debian packages; .ci/run installs them)",
)
def test_aarch64_cross_build_and_ctest_under_qemu(tmp_path):
    assert "100% tests passed" in build_and_ctest(tmp_path / "build", AARCH64)
