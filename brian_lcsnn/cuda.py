"""The CUDA device: brian2cuda's ``cuda_standalone``, with the fixes CUDA 13 needs.

brian2cuda 1.0b1 pins brian2 2.10.1 (Python >= 3.12). Without it, choosing the CUDA device is one clear
error, not a traceback; ``lcsnn doctor`` says what is missing. With it, `apply_cuda_fixes` sets what
brian2cuda does not (brian2-notes.md section 4): C++17 for host and device code (CUDA 13's Thrust refuses
C++11, which brian2cuda's makefile and brian2's default flags ask for), and cuRAND's headers and library when
they come from the ``nvidia-curand`` wheel instead of the CUDA toolkit.

Status: prepared and checked for import and flags on the CPU machine; not yet run on a GPU (see
``benchmarks/cuda_device_check.sh``).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from .errors import DeviceError

__all__ = ["apply_cuda_fixes", "find_curand", "SEED_CODE"]

try:
    import brian2cuda  # noqa: F401  (registers the cuda_standalone device)
except ImportError as err:
    raise DeviceError(
        f"device cuda_standalone needs brian2cuda ({err}); install it with pip install -e '.[cuda]' on "
        "Python >= 3.12, and see lcsnn doctor"
    ) from None

#: Re-seeds brian2cuda's random number buffer from the run's seed variable (``{seed}`` is its array).
SEED_CODE = "random_number_buffer.set_seed((unsigned long long) brian::{seed}[0]);"


def find_curand(cuda_path: str | None = None) -> tuple[Path | None, Path | None]:
    """cuRAND's include and library folders: the CUDA toolkit's, else the nvidia-curand wheel's."""
    roots = [cuda_path, os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for root in filter(None, roots):
        include, lib = Path(root) / "include", Path(root) / "lib64"
        if (include / "curand.h").exists() and glob.glob(str(lib / "libcurand.so*")):
            return include, lib
    for site in map(Path, sys.path):
        for include in sorted(site.glob("nvidia/cu*/include")) + sorted(site.glob("nvidia/curand/include")):
            lib = include.parent / "lib"
            if (include / "curand.h").exists() and glob.glob(str(lib / "libcurand.so*")):
                return include, lib
    return None, None


def apply_cuda_fixes(link_dir: Path) -> dict:
    """Set Brian2/brian2cuda preferences for CUDA 13; returns what was set (recorded with the run)."""
    from brian2 import prefs

    gcc = [arg for arg in prefs.codegen.cpp.extra_compile_args_gcc if not arg.startswith("-std=")]
    prefs.codegen.cpp.extra_compile_args_gcc = [*gcc, "-std=c++17"]
    nvcc = [arg for arg in prefs.devices.cuda_standalone.cuda_backend.extra_compile_args_nvcc if arg != "-std=c++17"]
    nvcc.append("-std=c++17")  # after the makefile's -std=c++11: the last one counts
    include, lib = find_curand(prefs.devices.cuda_standalone.cuda_backend.cuda_path)
    applied = {"std": "c++17", "curand_include": str(include) if include else None}
    if include is not None and lib is not None and not str(include).startswith(("/usr/local/cuda", "/usr/include")):
        nvcc.append(f"-I{include}")
        # the wheel ships libcurand.so.N only: give the linker the name it looks for
        link_dir.mkdir(parents=True, exist_ok=True)
        target = sorted(glob.glob(str(lib / "libcurand.so*")))[-1]
        link = link_dir / "libcurand.so"
        if not link.exists():
            link.symlink_to(target)
        prefs.codegen.cpp.library_dirs = [*prefs.codegen.cpp.library_dirs, str(link_dir)]
        prefs.codegen.cpp.runtime_library_dirs = [*prefs.codegen.cpp.runtime_library_dirs, str(lib)]
        applied["curand_library"] = target
    prefs.devices.cuda_standalone.cuda_backend.extra_compile_args_nvcc = nvcc
    return applied
