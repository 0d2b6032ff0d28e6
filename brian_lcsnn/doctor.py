"""``lcsnn doctor``: check that this machine can run the package.

Each check returns a :class:`Check`; :func:`run_doctor` prints one aligned line per check,
``[ ok ]``, ``[FAIL]`` or ``[ -- ]`` (optional and absent), and returns the exit code:
0 when everything the default C++ standalone path needs works, 1 otherwise.  CUDA and
the MNIST cache are optional and never change the exit code.  The test build runs in a
subprocess, so the Brian2 device state of the calling process is left untouched.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Check", "checks", "format_line", "run_doctor"]

#: (import name, distribution name) of the required third-party packages besides brian2/numpy.
PACKAGES = (
    ("sklearn", "scikit-learn"),
    ("pandas", "pandas"),
    ("matplotlib", "matplotlib"),
    ("seaborn", "seaborn"),
    ("yaml", "pyyaml"),
)

_BUILD_SCRIPT = """\
import sys
from brian2 import *
set_device('cpp_standalone', directory=sys.argv[1])
G = NeuronGroup(2, 'dv/dt = -v/(10*ms) : 1', threshold='v>1', reset='v=0')
G.v = 2
M = SpikeMonitor(G)
run(2*ms)
print(M.num_spikes)
"""


@dataclass(frozen=True)
class Check:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        Short name shown in the report.
    ok : bool or None
        True if fine, False if broken, None if an optional thing is absent (not a failure).
    detail : str
        What was found (versions, paths, error text).
    fix : str
        A hint how to fix a failure or get an absent optional thing; may be empty.
    required : bool
        Whether ``ok is False`` makes :func:`run_doctor` return 1.
    """

    name: str
    ok: bool | None
    detail: str
    fix: str = ""
    required: bool = True


def _vtuple(version: str) -> tuple[int, ...]:
    """Leading numeric components of a version string: ``'2.4.0rc1'`` -> ``(2, 4, 0)``."""
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def _run(cmd: list[str], timeout: float = 20) -> str:
    """Run ``cmd`` and return its stdout; raise ``RuntimeError`` on a non-zero exit."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError((res.stderr or res.stdout).strip() or f"exit code {res.returncode}")
    return res.stdout


def _check_python() -> Check:
    v = sys.version_info
    ver = f"{v.major}.{v.minor}.{v.micro}"
    if v < (3, 11):
        return Check("python", False, f"{ver} (need >= 3.11)", "install Python >= 3.11")
    note = "" if v >= (3, 12) else " (CUDA via brian2cuda 1.0b1 needs Python >= 3.12 and brian2 2.10.1)"
    return Check("python", True, ver + note)


def numpy_rule(brian2_version: str, numpy_version: str) -> Check:
    """Check the brian2/numpy pair: brian2 2.9.x breaks with numpy >= 2.4."""
    detail = f"brian2 {brian2_version}, numpy {numpy_version}"
    if _vtuple(brian2_version)[:2] == (2, 9) and _vtuple(numpy_version)[:2] >= (2, 4):
        return Check(
            "brian2 / numpy", False, detail + ": brian2 2.9 breaks with numpy >= 2.4", "pip install 'numpy<2.4'"
        )
    return Check("brian2 / numpy", True, detail)


def _check_brian2_numpy() -> Check:
    try:
        import brian2
        import numpy
    except ImportError as exc:
        return Check("brian2 / numpy", False, f"cannot import: {exc}", "pip install -e .")
    return numpy_rule(brian2.__version__, numpy.__version__)


def _check_compiler() -> Check:
    cxx = os.environ.get("CXX", "").strip()
    candidates = [shlex.split(cxx)[0]] if cxx else ["g++", "c++"]
    path = next((p for p in map(shutil.which, candidates) if p), None)
    fix = "apt-get install g++ make (Debian/Ubuntu) or conda install gxx_linux-64 make"
    if path is None:
        return Check("C++ compiler", False, f"none of {', '.join(candidates)} found" + (" ($CXX)" if cxx else ""), fix)
    first = _run([path, "--version"]).strip().splitlines()[0]
    if sys.platform != "win32" and shutil.which("make") is None:
        return Check("C++ compiler", False, f"{first}, but 'make' not found", fix)
    return Check("C++ compiler", True, f"{path}: {first}")


def _check_packages(packages=PACKAGES) -> Check:
    found, missing = [], []
    for module, dist in packages:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or a broken install raising something else
            missing.append(f"{dist} ({type(exc).__name__})")
            continue
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(dist)
    if missing:
        return Check("python packages", False, "missing: " + ", ".join(missing), "pip install -e .")
    return Check("python packages", True, ", ".join(found))


def _check_build(timeout: float = 300) -> Check:
    name, fix = "C++ standalone build", "fix the checks above; see the stderr shown here"
    with tempfile.TemporaryDirectory(prefix="lcsnn_doctor_") as tmp:
        t0 = time.perf_counter()
        try:
            res = subprocess.run(
                [sys.executable, "-c", _BUILD_SCRIPT, str(Path(tmp) / "build")],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            return Check(name, False, f"no result within {timeout:.0f} s", fix)
        secs = time.perf_counter() - t0
    out = res.stdout.strip().splitlines()
    if res.returncode == 0 and out and out[-1].strip() == "2":
        return Check(name, True, f"compiled and ran in {secs:.1f} s")
    tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-4:])
    return Check(name, False, f"exit code {res.returncode}: {tail or 'no output'}", fix)


def _check_nvcc() -> Check:
    if shutil.which("nvcc") is None:
        return Check("CUDA nvcc", None, "not found", "install the CUDA toolkit (optional)", False)
    return Check("CUDA nvcc", True, _run(["nvcc", "--version"]).strip().splitlines()[-1], required=False)


def _check_gpu() -> Check:
    if shutil.which("nvidia-smi") is None:
        return Check("CUDA GPU", None, "nvidia-smi not found", "an NVIDIA GPU and driver (optional)", False)
    rows = _run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    gpus = [[f.strip() for f in r.split(",")] for r in rows.strip().splitlines() if r.strip()]
    if not gpus:
        return Check("CUDA GPU", None, "no GPU listed by nvidia-smi", "", False)
    detail = "; ".join(f"{g[0]} (compute capability {g[-1]})" for g in gpus)
    if all(_vtuple(g[-1]) < (7, 5) for g in gpus):
        return Check(
            "CUDA GPU",
            False,
            detail + ": CUDA 13 needs compute capability >= 7.5",
            "use a GPU with compute capability >= 7.5 or an older CUDA toolkit",
            False,
        )
    return Check("CUDA GPU", True, detail, required=False)


def _check_brian2cuda() -> Check:
    fix = "pip install -e '.[cuda]' on Python >= 3.12 (brian2cuda 1.0b1 with brian2 2.10.1)"
    try:
        importlib.import_module("brian2cuda")
    except ImportError:
        return Check("brian2cuda", None, "not installed", fix, False)
    except Exception as exc:
        return Check("brian2cuda", False, f"import fails: {exc}", fix, False)
    return Check("brian2cuda", True, importlib.metadata.version("brian2cuda"), required=False)


def _check_mnist() -> Check:
    from .data import default_cache_dir

    path = default_cache_dir() / "mnist.npz"
    if path.is_file():
        return Check("MNIST cache", True, f"{path} ({path.stat().st_size / 1e6:.1f} MB)", required=False)
    return Check("MNIST cache", None, f"{path}: not downloaded yet; the first run fetches it", "", False)


def _safe(name: str, func: Callable[[], Check], required: bool = True) -> Check:
    """Run one check; an exception becomes a failed :class:`Check` with its text."""
    try:
        return func()
    except Exception as exc:  # a doctor must never crash
        return Check(name, False, f"{type(exc).__name__}: {exc}".replace("\n", " | "), "see the error text", required)


def checks() -> list[Check]:
    """Run all checks in order and return their results (never raises)."""
    plan = [
        ("python", _check_python, True),
        ("brian2 / numpy", _check_brian2_numpy, True),
        ("C++ compiler", _check_compiler, True),
        ("python packages", _check_packages, True),
        ("C++ standalone build", _check_build, True),
        ("CUDA nvcc", _check_nvcc, False),
        ("CUDA GPU", _check_gpu, False),
        ("brian2cuda", _check_brian2cuda, False),
        ("MNIST cache", _check_mnist, False),
    ]
    return [_safe(name, func, required) for name, func, required in plan]


def format_line(check: Check, width: int = 0) -> str:
    """One report line: status mark, name padded to ``width``, detail, and a fix hint."""
    mark = {True: "[ ok ]", False: "[FAIL]", None: "[ -- ]"}[check.ok]
    line = f"{mark} {check.name:<{width}}  {check.detail}"
    if check.ok is not True and check.fix:
        line += f"  -- fix: {check.fix}"
    return line.replace("\n", " | ")


def run_doctor() -> int:
    """Print the report; return 0 if every required check passed, else 1."""
    results = checks()
    width = max(len(c.name) for c in results)
    for c in results:
        print(format_line(c, width), flush=True)
    failed = [c.name for c in results if c.required and c.ok is False]
    print(f"{len(failed)} required check(s) failed: {', '.join(failed)}" if failed else "all required checks passed")
    return 1 if failed else 0
