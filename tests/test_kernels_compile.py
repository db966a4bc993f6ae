"""Every CUDA kernel compiles: with nvcc for sm_90 (as CI does) and, where CuPy is installed, with NVRTC.

CI sets RNNCORE_REQUIRE_NVCC=1 so a machine without nvcc fails instead of skipping.
"""
import os
import re
import shutil
import subprocess

import pytest

import rnncore
from rnncore import _kernels

FILES = sorted(_kernels.CUDA_KERNELS)


def instantiating_source(filename):
    """The module source plus a table of kernel addresses, which makes nvcc instantiate every template."""
    table = ", ".join(f"(void*)&{name}" for name in _kernels.cuda_name_expressions(filename))
    return f"{_kernels.cuda_module_source(filename)}\nvoid* rnncore_kernel_table[] = {{{table}}};\n"


def test_every_cu_file_is_listed():
    on_disk = {p.name for p in _kernels.folder().glob("*.cu")}
    assert on_disk == set(FILES)


@pytest.mark.parametrize("filename", FILES)
def test_nvcc_compiles_for_sm90(filename, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        if os.environ.get("RNNCORE_REQUIRE_NVCC") == "1":
            pytest.fail("nvcc is required here (RNNCORE_REQUIRE_NVCC=1) but not on PATH")
        pytest.skip("nvcc is not installed")
    source = tmp_path / filename
    source.write_text(instantiating_source(filename))
    result = subprocess.run(
        [nvcc, "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-v", "-c", str(source), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    # ptxas reports each kernel it compiled, then its registers: every instantiation is there
    compiled = re.findall(r"Compiling entry function '(\w+)'", result.stderr)
    assert len(set(compiled)) == len(_kernels.cuda_name_expressions(filename)), compiled
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr)
    assert len(spills) == len(compiled) and all(s == ("0", "0") for s in spills), \
        "a kernel spills registers to local memory"


def test_every_cell_kernel_is_instantiated_for_every_cell_and_precision():
    """The recurrence kernels are templates over the cell: each exists for RNN, LSTM and GRU in
    float and double, named as CuPy will ask for them."""
    names = set(_kernels.cuda_name_expressions("recurrence.cu"))
    for kernel in _kernels.CUDA_CELL_KERNELS:
        for cell in ("RnnCell", "LstmCell", "GruCell"):
            for ctype in ("float", "double"):
                assert f"{kernel}<{cell}, {ctype}>" in names
    assert _kernels.CUDA_CELL_KERNELS <= set(_kernels.CUDA_KERNELS["recurrence.cu"])
    assert set(_kernels.CUDA_CELLS) == set(rnncore.cells.CELLS)


def test_module_source_inlines_each_header_once():
    """NVRTC gets no include path: the module text has no #include left, and common.cuh (included
    by cells.cuh and recurrence.cu's chain) appears once."""
    source = _kernels.cuda_module_source("recurrence.cu")
    assert not re.search(r'^#include "', source, re.MULTILINE)
    assert source.count("__device__ __forceinline__ T warp_sum") == 1
    assert "struct GruCell" in source


@pytest.mark.parametrize("filename", FILES)
def test_nvrtc_compiles(filename):
    """What CuPy does at run time, minus the device: catches NVRTC-only differences from nvcc."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc")
    program = nvrtc.createProgram(_kernels.cuda_module_source(filename), filename, (), ())
    for name in _kernels.cuda_name_expressions(filename):
        nvrtc.addNameExpression(program, name)
    try:
        nvrtc.compileProgram(program, ["-arch=compute_90", "-std=c++17"])
    except Exception as exc:
        pytest.fail(f"NVRTC rejected {filename}: {exc}\n{nvrtc.getProgramLog(program)}")
