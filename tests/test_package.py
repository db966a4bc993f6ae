"""The package: lazy imports, backend selection, errors that say what to install, the wheel's kernels."""
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_GPU, HAS_NUMBA, REPO

import rnncore
from rnncore.backends import BackendNotAvailable


def run_python(code, env=None, cwd=REPO):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_loads_neither_numba_nor_cupy():
    out = run_python("import sys, rnncore; print(sorted(m for m in ('numba', 'cupy') if m in sys.modules))")
    assert out == "[]"


def test_selection_order_argument_then_context_then_environment():
    code = (
        "import rnncore\n"
        "print(rnncore.get_backend().name)\n"
        "with rnncore.use('numpy'):\n"
        "    print(rnncore.get_backend().name, rnncore.get_backend('numba').name)\n"
        "    with rnncore.use('numba'):\n"
        "        print(rnncore.get_backend().name)\n"
        "    print(rnncore.get_backend().name)\n"
    )
    if not HAS_NUMBA:
        pytest.skip("needs numba")
    out = run_python(code, env={"RNNCORE_BACKEND": "numba"}).split("\n")
    assert out == ["numba", "numpy numba", "numba", "numpy"]


def test_auto_picks_the_best_available():
    expected = "cupy" if HAS_GPU else "numba" if HAS_NUMBA else "numpy"
    assert run_python("import rnncore; print(rnncore.get_backend('auto').name)", env={"RNNCORE_BACKEND": ""}) == expected
    assert rnncore.available_backends()[-1] == expected


def test_auto_without_numba_falls_back_to_numpy():
    code = "import sys; sys.modules['numba'] = None; sys.modules['cupy'] = None\nimport rnncore; print(rnncore.get_backend().name)"
    assert run_python(code, env={"RNNCORE_BACKEND": "auto"}) == "numpy"


def test_a_missing_backend_names_the_extra_to_install():
    code = (
        "import sys; sys.modules['numba'] = None; sys.modules['cupy'] = None\n"
        "import rnncore\n"
        "for name in ('numba', 'cupy'):\n"
        "    try: rnncore.get_backend(name)\n"
        "    except rnncore.BackendNotAvailable as e: print(e)\n"
    )
    numba_msg, cupy_msg = run_python(code).split("\n")
    assert "pip install 'rnncore[numba]'" in numba_msg
    assert "'rnncore[cuda12]'" in cupy_msg and "'rnncore[cuda13]'" in cupy_msg


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_cupy_without_a_device_says_so():
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(BackendNotAvailable, match="rnncore\\[cuda12\\]"):
            rnncore.get_backend("cupy")
    else:
        with pytest.raises(BackendNotAvailable, match="no CUDA device answers"):
            rnncore.get_backend("cupy")


def test_backends_are_shared_instances():
    assert rnncore.get_backend("numpy") is rnncore.get_backend("numpy")
    with rnncore.use("numpy") as be:
        assert be is rnncore.get_backend()


def _can_build_offline():
    """The installed setuptools builds wheels itself from 70.1 on; older ones need ``wheel``."""
    try:
        import setuptools
    except ImportError:
        return False
    version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def test_installed_wheel_finds_its_kernels(tmp_path):
    """Build a real (non-editable) wheel, unpack it elsewhere, import from there only."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)]
    if _can_build_offline():
        cmd.insert(4, "--no-build-isolation")
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("rnncore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    sources = [p.relative_to(REPO / "kernels").as_posix() for p in (REPO / "kernels").rglob("*")
               if p.suffix in (".cu", ".cuh", ".py") and "__pycache__" not in p.parts]
    assert sources and {f"rnncore/kernels/{f}" for f in sources} <= set(names)  # every kernel file, no stale ones
    assert {n for n in names if n.startswith("rnncore/kernels/")} <= {f"rnncore/kernels/{f}" for f in sources}
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import rnncore, rnncore._kernels as k\n"
        "print(rnncore.__file__); print(k.folder()); print(len(k.cuda_module_source('recurrence.cu')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    module_file, folder, size = out.stdout.split("\n")[:3]
    assert Path(module_file).is_relative_to(site) and Path(folder) == site / "rnncore" / "kernels"
    assert int(size) > 1000
    if HAS_NUMBA:
        code = "import numpy as np, rnncore; l = rnncore.TimeRNN(*(np.ones(s, np.float32) for s in ((2, 3), (3, 3), (3,))), backend='numba'); print(l.forward(np.ones((1, 2, 2), np.float32)).shape)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "(1, 2, 3)", out.stderr


def test_peak_memory_sees_a_large_allocation(backend):
    if backend.name.startswith("cupy-emu"):
        pytest.skip("the CPU stand-in for CuPy has no memory pool to hook")
    size = 8 * 2**20
    with backend.peak_memory() as report:
        a = backend.xp.ones(size // 8, dtype="float64")
        del a
    assert size <= report.peak_bytes < 2 * size


def test_readme_commands_are_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    test_command = 'pip install -e ".[numba,test]" && python -m pytest'
    main_job = 'pip install ".[numba,bench]" && rnncore bench --quick'
    assert test_command in readme and test_command in ci
    assert main_job in readme


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
def test_numba_cache_is_dropped_when_a_kernel_source_changes():
    """Numba's cache checks only a kernel's own file; rnncore drops a module's cache when any
    kernel file changed (here: the recorded digest no longer matches)."""
    from rnncore import _kernels

    module = _kernels.numba_module("training_numba")
    kernel = module.sum_rows
    a = np.ones((3, 40), dtype=np.float32)
    kernel(a, np.empty(40, dtype=np.float32), 2)  # compiled (or loaded) and cached
    index = kernel._cache._cache_file
    marker = Path(kernel._cache._cache_path) / "training_numba.sources"
    if not os.access(marker.parent, os.W_OK):
        pytest.skip("the numba cache folder is read-only")
    if not index._load_index():  # an earlier test flushed the cache after this process compiled it: save it again
        for sig in kernel.signatures:  # (an overload loaded from the cache cannot be saved: it holds no object code)
            kernel._cache.save_overload(sig, kernel.overloads[sig])
    assert index._load_index(), "nothing was cached"
    marker.write_text("a digest of older sources")
    _kernels._drop_stale_numba_cache(module)
    assert index._load_index() == {}
    assert marker.read_text() == _kernels._numba_sources_digest()


def test_every_backend_satisfies_the_seam(backend):
    """Every backend (and the emulated CUDA one) has each method of BackendProtocol with its
    parameters in order, and its own recurrence and training kernels (not the base class's)."""
    import inspect

    from rnncore.backends.base import Backend, BackendProtocol

    assert isinstance(backend, BackendProtocol)
    for name, spec in vars(BackendProtocol).items():
        if callable(spec) and not name.startswith("_"):
            ours = inspect.signature(getattr(type(backend), name))
            assert list(ours.parameters) == list(inspect.signature(spec).parameters), name
    for name in ("recurrence_forward", "recurrence_backward", "embedding_scatter_add", "softmax_cross_entropy"):
        assert getattr(type(backend), name) is not getattr(Backend, name), f"{backend.name} lacks {name}"


def test_the_core_never_imports_the_application():
    """Imports point one way: rnncore.app uses the core; no core module imports rnncore.app."""
    import ast

    root = REPO / "rnncore"
    for path in root.rglob("*.py"):
        package = ["rnncore", *path.relative_to(root).parent.parts]
        if "app" in package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # resolve ``from ..x import y`` against the file's package
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                targets = [module] + [f"{module}.{a.name}" for a in node.names]
            else:
                continue
            assert not any(t == "rnncore.app" or t.startswith("rnncore.app.") for t in targets), \
                f"{path.relative_to(REPO)} imports the app"
    out = subprocess.run([sys.executable, "-c", "import sys, rnncore, rnncore.layers, rnncore.models, rnncore.bptt; "
                          "print(sorted(m for m in sys.modules if m.startswith('rnncore.app')))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present")
def test_required_gpu_turns_the_skip_into_a_failure_naming_why():
    env = {**os.environ, "RNNCORE_REQUIRE_GPU": "1"}
    test = "tests/test_gpu.py"
    out = subprocess.run([sys.executable, "-m", "pytest", test, "-x", "-q", "-n", "0", "-p", "no:cacheprovider"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "RNNCORE_REQUIRE_GPU=1 but the GPU cannot be used: CuPy is not installed" in out.stdout
    plain = subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-n", "0", "-p", "no:cacheprovider", "-rs"], cwd=REPO,
                           capture_output=True, text=True, timeout=600,
                           env={k: v for k, v in os.environ.items() if k != "RNNCORE_REQUIRE_GPU"})
    assert plain.returncode == 0 and "needs CuPy and a CUDA device: CuPy is not installed" in plain.stdout


def test_cuda_status_names_what_is_missing(monkeypatch):
    """A device whose libraries fail to load is not 'no GPU': the reason names the install."""
    import types

    from rnncore import backends

    broken = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)),
        float32="float32",
        ones=lambda *a, **k: (_ for _ in ()).throw(RuntimeError("CuPy failed to load libnvrtc.so.13")))
    monkeypatch.setitem(sys.modules, "cupy", broken)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    backends.cuda_status.cache_clear()
    try:
        ok, why = backends.cuda_status()
    finally:
        backends.cuda_status.cache_clear()
    assert not ok and "libnvrtc" in why and "rnncore[cuda13]" in why
