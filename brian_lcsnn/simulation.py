"""Compiled, chunked simulation: one build per network structure, many runs of a chunk of samples.

C++ standalone (the default) compiles the network once into a cached build directory and then runs the
binary once per chunk of samples, passing the chunk's stimulus, the learning schedule, the weights, the
thresholds and a seed as ``run_args``: no Python in the per-sample or per-step loop, and an unchanged
structure never recompiles. ``runtime`` (numpy code generation) rebuilds the network per chunk and is
meant for debugging small runs.
"""

from __future__ import annotations

import fcntl
import gc
import hashlib
import inspect
import json
import logging
import os
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import brian2 as b2
import numpy as np

from .errors import DeviceError
from .network import BuiltNetwork, NetworkSpec, build_network

__all__ = ["DeviceError", "DEVICES", "NetworkState", "ChunkResult", "Simulator", "default_build_root", "spike_counts"]

logger = logging.getLogger(__name__)

DEVICES = ("cpp_standalone", "runtime", "cuda_standalone")

#: Re-seeds every random generator of a C++ build from the run's seed variable (``{seed}`` is its array), so
#: that each chunk of samples has its own random stream although the binary is the same.
CPP_SEED_CODE = (
    "for (size_t _k = 0; _k < brian::_random_generators.size(); _k++)\n"
    "    brian::_random_generators[_k].seed((unsigned long)brian::{seed}[0] + _k);"
)


def default_build_root() -> Path:
    """Where compiled builds are cached: ``$BRIAN_LCSNN_BUILD`` or ``~/.cache/brian_lcsnn/builds``."""
    root = os.environ.get("BRIAN_LCSNN_BUILD")
    return Path(root) if root else Path.home() / ".cache" / "brian_lcsnn" / "builds"


@dataclass
class NetworkState:
    """The learned state: XY and YY weights (synapse order of the build) and Y's thresholds (volt)."""

    xy_w: np.ndarray
    yy_w: np.ndarray
    theta: np.ndarray

    def copy(self) -> NetworkState:
        return NetworkState(self.xy_w.copy(), self.yy_w.copy(), self.theta.copy())


@dataclass
class ChunkResult:
    counts: np.ndarray  # (n_samples, n_neurons) spike counts of Y
    state: NetworkState
    seconds: float  # wall time of the run, process start and I/O included
    synapse_w: np.ndarray | None = None  # XY weight of every synapse as the build sees it (when asked)
    voltages: np.ndarray | None = None  # (n_neurons, steps) Y voltages in mV (runtime device, when asked)
    spikes: tuple[np.ndarray, np.ndarray] | None = None  # every Y spike's (neuron, time in s), with the voltages


def spike_counts(indices, times, n_samples: int, n_neurons: int, steps_per_sample: int, dt) -> np.ndarray:
    """Bin a chunk's spikes into per-sample counts (uint16, shape (n_samples, n_neurons))."""
    # t / dt is 1999.9999 for step 2000: round, never truncate
    steps = np.rint(np.asarray(times) / float(dt)).astype(np.int64)
    sample = steps // steps_per_sample
    keep = sample < n_samples
    flat = sample[keep] * n_neurons + np.asarray(indices, dtype=np.int64)[keep]
    counts = np.bincount(flat, minlength=n_samples * n_neurons)
    return counts.reshape(n_samples, n_neurons).astype(np.uint16)


def _structure_key(spec: NetworkSpec, device: str, float_dtype: str, threads: int) -> str:
    """A hash of everything that changes the generated code."""
    models = {
        # runtime parameters are set by each run (run_args): their values are not part of the code
        role: {
            "text": getattr(spec, role).path.read_text(),
            "params": repr(sorted(getattr(spec, role).compiled_parameters.items())),
        }
        for role in ("input", "neuron", "xy", "normalisation", "yy")
    }
    key = {
        "geometry": repr(spec.geometry),
        "models": models,
        "chunk": spec.samples_per_chunk,
        "T": repr(spec.time_per_sample),
        "dt": repr(spec.dt),
        "device": device,
        "float": float_dtype,
        "threads": threads,
        "brian2": b2.__version__,
        "numpy": np.__version__,
        # the Python that lays out the network is part of the structure too
        "network_code": hashlib.sha256(Path(inspect.getfile(build_network)).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _RunArgsInUse:
    """A shared lock on a build directory while a run reads its run_args files (``static_arrays/init_*.dat``).

    Brian2 names those files by their content, so two processes running one build with the same data (the
    same test images, say) share a file. Whoever finishes deletes the run_args files only when no other run
    holds the lock; otherwise the last run to finish deletes them all.
    """

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir
        self.handle = open(build_dir / "run_args.lock", "w")  # held until release()
        fcntl.flock(self.handle, fcntl.LOCK_SH)

    def release(self) -> None:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # another run is reading its files: it cleans up when it is the last one
        else:
            for path in (self.build_dir / "static_arrays").glob("init_*.dat*"):  # the arrays and their .lock files
                path.unlink(missing_ok=True)
        finally:
            self.handle.close()  # releases the lock


def _plastic_flags(built: BuiltNetwork, plastic: dict[str, bool]) -> dict:
    """The ``plastic`` gate of every group whose model has one (1: learns in training samples)."""
    flags = {}
    for name, groups in (("XY", (built.XY, built.kernels)), ("YY", (built.YY,))):
        gated = [g for g in groups if g is not None and "plastic" in g.variables]
        if plastic.get(name) and not gated:
            raise ValueError(f"projection {name} cannot learn: its model has no 'plastic' variable")
        for group in gated:
            flags[group] = float(bool(plastic.get(name)))
    return flags


class Simulator:
    """Runs chunks of samples through one network structure.

    Parameters
    ----------
    spec : NetworkSpec
        The structure.
    device : str
        ``"cpp_standalone"`` (default), ``"runtime"`` or ``"cuda_standalone"``.
    build_root : Path, optional
        Cache of compiled builds (default: `default_build_root`).
    float_dtype : str
        ``"float64"`` or ``"float32"`` for all floating-point state.
    threads : int
        OpenMP threads of the C++ build (0 or 1: one thread, the fastest here for these sizes).
    """

    def __init__(self, spec: NetworkSpec, device: str = "cpp_standalone", build_root: Path | None = None,
                 float_dtype: str = "float64", threads: int = 1):  # fmt: skip
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
        self.spec = spec
        self.device_name = device
        self.float_dtype = float_dtype
        self.threads = threads
        self.build_root = Path(build_root) if build_root else default_build_root()
        self.key = _structure_key(spec, device, float_dtype, threads)
        self.build_dir = self.build_root / self.key
        self.built: BuiltNetwork | None = None
        self.compile_seconds = 0.0
        self.compiled_now = False
        self.cuda_fixes: dict | None = None

    # -- preparation -------------------------------------------------------------------------------------
    def _set_prefs(self):
        b2.prefs.core.default_float_dtype = getattr(np, self.float_dtype)
        b2.defaultclock.dt = self.spec.dt

    def prepare(self, progress: bool = False) -> float:
        """Build (or reuse) the compiled network; returns the seconds it took. ``progress``: say on stderr when a
        C++ build is compiled (its build folder has no binary yet), the silent minute of a first run."""
        start = time.perf_counter()
        if self.device_name == "runtime":
            b2.set_device("runtime")
            b2.prefs.codegen.target = "numpy"
            self._set_prefs()
        else:
            self._prepare_standalone(progress)
        self.compile_seconds = time.perf_counter() - start
        return self.compile_seconds

    def _prepare_standalone(self, progress: bool = False):
        if self.device_name == "cuda_standalone":
            from . import cuda  # registers the device (DeviceError without brian2cuda)
        # A fresh standalone device for every build (the current device may be another one, e.g. runtime).
        # Brian2 suffixes code-object names (_1, ...) while objects of an earlier build are alive, which
        # changes the generated files and forces a recompile: drop the device's references, collect the dead.
        b2.set_device(self.device_name, build_on_run=False)
        b2.device.reinit()
        gc.collect()
        b2.device.activate(build_on_run=False)
        self._set_prefs()
        b2.prefs.devices.cpp_standalone.openmp_threads = 0 if self.threads <= 1 else self.threads
        b2.prefs.devices.cpp_standalone.extra_make_args_unix = [f"-j{os.cpu_count() or 1}"]
        seed_code = CPP_SEED_CODE
        if self.device_name == "cuda_standalone":
            self.cuda_fixes = cuda.apply_cuda_fixes(self.build_root / "cuda_libs")
            seed_code = cuda.SEED_CODE
        built = build_network(self.spec)
        # run_args are applied here, after all objects and their initial values exist
        b2.device.apply_run_args()
        seed_array = b2.device.get_array_name(built.rng.variables["seed"])
        b2.device.insert_code("main", seed_code.format(seed=seed_array))
        built.network.run(self.spec.duration)
        with _locked(self.build_root / f"{self.key}.lock"):
            binary = self.build_dir / "main"
            before = binary.stat().st_mtime_ns if binary.exists() else None
            if progress and before is None:
                print(f"compiling (once per network structure) into {self.build_dir} ...", file=sys.stderr,
                      flush=True)  # fmt: skip
            b2.device.build(directory=str(self.build_dir), compile=True, run=False, with_output=False)
            # make relinks only when a source changed: an unchanged binary means nothing was recompiled
            self.compiled_now = before != binary.stat().st_mtime_ns
            (self.build_dir / "lcsnn_build.json").write_text(json.dumps({"key": self.key, "brian2": b2.__version__}))
        self.built = built

    # -- running -----------------------------------------------------------------------------------------
    def _padded_inputs(self, rates: np.ndarray, learning: np.ndarray):
        K = self.spec.samples_per_chunk
        n = len(rates)
        if n > K:
            raise ValueError(f"a chunk holds at most {K} samples, got {n}")
        stim = np.zeros((K + 1, self.spec.geometry.n_inputs))
        stim[:n] = rates
        schedule = np.zeros(K + 1)
        schedule[:n] = learning
        return stim, schedule

    def run_chunk(self, rates: np.ndarray, learning: np.ndarray, state: NetworkState, *, seed: int,
                  plastic: dict[str, bool], norm_target: float, read_synapses: bool = False,
                  record_voltages: bool = False) -> ChunkResult:  # fmt: skip
        """Present ``len(rates)`` samples (rates in Hz, (n, n_inputs)) and return counts and new state.

        ``learning[k]`` says whether sample k is a training sample (plasticity and threshold adaptation on);
        ``plastic`` which projections (``"XY"``, ``"YY"``) learn in those samples. ``read_synapses`` also
        returns every XY synapse's weight as the build reads it (for C: through its link into the kernels);
        ``record_voltages`` (runtime device only) every Y neuron's voltage at every step.
        """
        if self.device_name == "runtime":
            return self._run_runtime(rates, learning, state, seed, plastic, norm_target, read_synapses,
                                     record_voltages)  # fmt: skip
        if record_voltages:
            raise ValueError("voltages are recorded on the runtime device only (device='runtime')")
        if self.built is None:
            self.prepare()
        b = self.built
        stim, schedule = self._padded_inputs(rates, learning)
        run_args = {
            b.stimulus: stim * b2.Hz,
            b.learning_schedule: schedule,
            b.xy_weights.w: state.xy_w,
            b.YY.w: state.yy_w,
            b.Y.theta: state.theta * b2.volt,
            b.norm_target_group.norm_target: float(norm_target),
            b.rng.seed: int(seed),
        }
        for group, flag in _plastic_flags(b, plastic).items():
            run_args[group.plastic] = flag
        for group, name, value in b.runtime_parameters():
            run_args[getattr(group, name)] = value
        results = f"results_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        in_use = _RunArgsInUse(self.build_dir)
        try:
            b2.device.run(directory=str(self.build_dir), results_directory=results, with_output=False,
                          run_args=run_args)  # fmt: skip
            new_state = NetworkState(
                np.array(b.xy_weights.w[:], dtype=np.float64),
                np.array(b.YY.w[:], dtype=np.float64),
                np.array(b.Y.theta_[:], dtype=np.float64),
            )
            counts = spike_counts(b.spikes.i[:], b.spikes.t_[:], len(rates), self.spec.geometry.n_neurons,
                                  self.spec.steps_per_sample, self.spec.dt)  # fmt: skip
            synapse_w = np.array(b.XY.w[:], dtype=np.float64) if read_synapses else None
        finally:
            shutil.rmtree(self.build_dir / results, ignore_errors=True)
            in_use.release()
        return ChunkResult(counts, new_state, time.perf_counter() - start, synapse_w)

    def _run_runtime(self, rates, learning, state, seed, plastic, norm_target, read_synapses,
                     record_voltages=False) -> ChunkResult:  # fmt: skip
        stim, schedule = self._padded_inputs(rates, learning)
        b2.start_scope()
        b = build_network(self.spec, record_voltages=record_voltages)
        b.stimulus.values[:] = stim
        b.learning_schedule.values[:] = schedule
        b.xy_weights.w[:] = state.xy_w
        b.YY.w[:] = state.yy_w
        b.Y.theta[:] = state.theta * b2.volt
        for group, flag in _plastic_flags(b, plastic).items():
            group.plastic = flag
        b.norm_target_group.norm_target = float(norm_target)
        for group, name, value in b.runtime_parameters():
            setattr(group, name, value)
        b2.seed(int(seed))
        start = time.perf_counter()
        b.network.run(self.spec.duration, namespace={})
        new_state = NetworkState(np.array(b.xy_weights.w[:], dtype=np.float64), np.array(b.YY.w[:], dtype=np.float64),
                                 np.array(b.Y.theta_[:], dtype=np.float64))  # fmt: skip
        counts = spike_counts(b.spikes.i[:], b.spikes.t_[:], len(rates), self.spec.geometry.n_neurons,
                              self.spec.steps_per_sample, self.spec.dt)  # fmt: skip
        synapse_w = np.array(b.XY.w[:], dtype=np.float64) if read_synapses else None
        voltages = np.array(b.voltages.v_[:]) * 1e3 if record_voltages else None
        spikes = (np.array(b.spikes.i[:]), np.array(b.spikes.t_[:])) if record_voltages else None
        return ChunkResult(counts, new_state, time.perf_counter() - start, synapse_w, voltages, spikes)
