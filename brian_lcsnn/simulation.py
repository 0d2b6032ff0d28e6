"""Compiled, chunked simulation: one build per network structure, many runs of a chunk of samples.

C++ standalone (the default) compiles the network once into a cached build directory and then runs the
binary once per chunk of samples, passing the chunk's stimulus, the learning schedule, the weights, the
thresholds and a seed as ``run_args``: no Python in the per-sample or per-step loop, and an unchanged
structure never recompiles. ``runtime`` (numpy code generation) rebuilds the network per chunk and is
meant for debugging small runs.

Each standalone simulator owns its Brian2 device (its own ``CPPStandaloneDevice``): it makes it Brian2's
current device, with the preferences its build needs, for the length of each prepare, run and read only, and
then gives the previous device back. So several simulators (several structures, a runtime presentation in
between) can be used in turn in one process, as a notebook does.
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
import signal
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import brian2 as b2
import numpy as np
from brian2.core.names import Nameable
from brian2.devices.device import all_devices, reset_device

from .errors import DeviceError
from .network import BuiltNetwork, NetworkSpec, build_network
from .standalone import LcsnnStandaloneDevice, network_variant

__all__ = ["DeviceError", "DEVICES", "NetworkState", "ChunkResult", "Simulator", "default_build_root", "spike_counts"]

logger = logging.getLogger(__name__)

DEVICES = ("cpp_standalone", "runtime", "cuda_standalone")

#: Re-seeds every random generator of a C++ build from the run's seed variable (``{seed}`` is its array), so
#: that each chunk of samples has its own random stream although the binary is the same.
CPP_SEED_CODE = (
    "for (size_t _k = 0; _k < brian::_random_generators.size(); _k++)\n"
    "    brian::_random_generators[_k].seed((unsigned long)brian::{seed}[0] + _k);"
)


#: The Brian2 preferences a simulator sets while its device is current (the previous values come back after).
_PREFS = ("core.default_float_dtype", "core.stop_on_keyboard_interrupt", "codegen.target",
          "devices.cpp_standalone.openmp_threads", "devices.cpp_standalone.extra_make_args_unix")  # fmt: skip


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
    state: NetworkState | None  # None where the run was asked not to keep it (keep_state=False)
    seconds: float  # wall time of the run, process start and I/O included
    synapse_w: np.ndarray | None = None  # XY weight of every synapse as the build sees it (when asked)
    voltages: np.ndarray | None = None  # (n_neurons, steps) Y voltages in mV (runtime device, when asked)
    spikes: tuple[np.ndarray, np.ndarray] | None = None  # every Y spike's (neuron, time in s), with the voltages
    steps: int = 0  # time steps the run simulated
    steps_asked: int = 0  # time steps it was asked for: a whole chunk, or fewer where it stopped early

    @property
    def complete(self) -> bool:
        """Whether the run simulated every step it was asked for (an interrupted binary ends early)."""
        return self.steps == self.steps_asked


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
        "network_cpp": network_variant() if device == "cpp_standalone" else "brian2",
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


@contextmanager
def _own_names():
    """While a build creates its objects, the live objects of other builds do not count for Brian2's names.

    Brian2 names code objects uniquely among all live objects of the process (``find_name`` appends _1, ...),
    so another simulator's network would rename this build's code objects: other generated files than the
    same structure built alone, which recompiles, and recompiles again when it is next built alone. Only
    ``find_name`` reads this set of weak references; they all come back after the build.
    """
    instances = Nameable.__instances__()
    others = set(instances)
    instances.difference_update(others)
    try:
        yield
    finally:
        instances.update(ref for ref in others if ref() is not None)


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


def _children() -> set[int]:
    """The process ids of this process's children (Linux; an empty set where /proc does not tell)."""
    found = set()
    try:
        for task in os.listdir(f"/proc/{os.getpid()}/task"):
            found.update(int(pid) for pid in Path(f"/proc/{os.getpid()}/task/{task}/children").read_text().split())
    except (OSError, ValueError):
        pass
    return found


def _kill_new_children(before: set[int]) -> None:
    """Kill and reap the children started since ``before``. ``subprocess`` kills a binary it is waiting for
    when a signal interrupts the wait, but not one whose ``Popen`` was interrupted while it started: such a
    binary would go on alone, reading run_args files that are being deleted."""
    for pid in _children() - before:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _check_completed(steps: int, steps_asked: int, results_dir: Path | None = None, whole_chunk: bool = True) -> None:
    """A run that stopped before the steps it was asked for (an interrupt: Brian2's own Ctrl-C handling ends a
    binary early with exit status 0) gave no result: its counts and state are never used. ``steps`` is read from
    the step clock; a whole chunk's ``last_run_info.txt`` (completed fraction) must say 1 too."""
    fraction = 1.0
    path = results_dir / "last_run_info.txt" if results_dir is not None else None
    if whole_chunk and path is not None and path.exists():  # written by every device we know
        try:
            fraction = float(path.read_text().split()[1])
        except (IndexError, ValueError):
            fraction = float("nan")
    if steps != steps_asked or not fraction >= 1.0:
        raise RuntimeError(f"the simulation stopped before the end of its chunk ({steps} of {steps_asked} steps, "
                           f"completed fraction {fraction:.1%}): its result is not used")  # fmt: skip


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
        self._device = None  # this simulator's own Brian2 device (prepare creates it)

    # -- preparation -------------------------------------------------------------------------------------
    @contextmanager
    def _active(self):
        """This simulator's device as Brian2's current one, with the preferences it needs; then the previous
        device and preference values again (another simulator may have been used in between)."""
        saved = {name: b2.prefs[name] for name in _PREFS}
        b2.set_device(self._device, build_on_run=False)
        try:
            b2.prefs["core.default_float_dtype"] = getattr(np, self.float_dtype)
            # Brian2's default turns a Ctrl-C into "stop at the next step and return": a chunk cut short that
            # looks complete. Off, a compiled binary dies of the signal and a runtime run raises KeyboardInterrupt.
            b2.prefs["core.stop_on_keyboard_interrupt"] = False
            if self.device_name == "runtime":
                b2.prefs["codegen.target"] = "numpy"
            else:
                b2.prefs["devices.cpp_standalone.openmp_threads"] = 0 if self.threads <= 1 else self.threads
                b2.prefs["devices.cpp_standalone.extra_make_args_unix"] = [f"-j{os.cpu_count() or 1}"]
            yield self._device
        finally:
            for name, value in saved.items():
                b2.prefs[name] = value
            reset_device()  # the device that was current before (set_device put it on Brian2's stack)

    def prepare(self, progress: bool = False) -> float:
        """Build (or reuse) the compiled network; returns the seconds it took. ``progress``: say on stderr when a
        C++ build is compiled (its build folder has no binary yet), the silent minute of a first run."""
        start = time.perf_counter()
        if self.device_name == "runtime":
            self._device = all_devices["runtime"]  # keeps nothing between runs: each run builds its network
        else:
            self._prepare_standalone(progress)
        self.compile_seconds = time.perf_counter() - start
        return self.compile_seconds

    def _prepare_standalone(self, progress: bool = False):
        if self.device_name == "cuda_standalone":
            from . import cuda  # noqa: F401 -- imported to register the device (DeviceError without brian2cuda)
        # A device of our own, fresh for every build: its arrays, code objects and results folder are this
        # simulator's alone, whatever other simulators of this process build or run later. Brian2 suffixes
        # code-object names (_1, ...) while objects of a dead build are still uncollected, which changes the
        # generated files and forces a recompile: drop the old device's references, collect the dead.
        if self._device is not None:
            self._device.reinit()
            self._device = None
        self.built = None
        gc.collect()
        # cpp_standalone: Brian2's device without the per-step clock read (`standalone`); CUDA: brian2cuda's
        device_class = LcsnnStandaloneDevice if self.device_name == "cpp_standalone" else None
        self._device = (device_class or type(all_devices[self.device_name]))()
        with self._active(), _own_names():
            self._build_standalone(progress)

    def _build_standalone(self, progress: bool = False):
        # set_device copied the dt of the device current before into this one's defaultclock: a line of
        # main.cpp that would depend on what ran before (and recompile). Start from a clean device.
        self._device.reinit()
        self._device.activate(build_on_run=False)
        b2.defaultclock.dt = self.spec.dt
        seed_code = CPP_SEED_CODE
        if self.device_name == "cuda_standalone":
            from . import cuda

            self.cuda_fixes = cuda.apply_cuda_fixes(self.build_root / "cuda_libs")
            seed_code = cuda.SEED_CODE
        device = self._device
        built = build_network(self.spec)
        # run_args are applied here, after all objects and their initial values exist
        device.apply_run_args()
        seed_array = device.get_array_name(built.rng.variables["seed"])
        device.insert_code("main", seed_code.format(seed=seed_array))
        built.network.run(self.spec.duration)
        with _locked(self.build_root / f"{self.key}.lock"):
            binary = self.build_dir / "main"
            before = binary.stat().st_mtime_ns if binary.exists() else None
            if progress and before is None:
                print(f"compiling (once per network structure) into {self.build_dir} ...", file=sys.stderr,
                      flush=True)  # fmt: skip
            device.build(directory=str(self.build_dir), compile=True, run=False, with_output=False)
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

    def _stop_after(self, n: int, keep_state: bool) -> tuple[int, int]:
        """``stop_after`` of the run (`network.STOP_RUN`) and the time steps the run is asked for.

        A chunk of n < samples_per_chunk samples is padded with silent, non-learning samples. They change
        no count, but the state does change in them (every sample end normalises the weights again, which
        moves them in the last bits), so the padding is part of the state a chunk returns. Only a chunk whose
        state is dropped (``keep_state=False``) stops after its n samples (and the step that starts sample n).
        """
        K, steps = self.spec.samples_per_chunk, self.spec.steps_per_sample
        if keep_state or n >= K:
            return K + 1, K * steps + 1  # never stops early: every sample and the extra step
        return n, n * steps + 1

    def _steps_simulated(self, b: BuiltNetwork) -> int:
        # the step clock's t as the run left it (Brian2 re-reads t from the results; its cached timestep
        # is the end of a complete run, whatever the binary did)
        return int(np.rint(float(b.Y.clock.variables["t"].get_value()[0]) / float(self.spec.dt)))

    def run_chunk(self, rates: np.ndarray, learning: np.ndarray, state: NetworkState, *, seed: int,
                  plastic: dict[str, bool], norm_target: float, read_synapses: bool = False,
                  record_voltages: bool = False, keep_state: bool = True) -> ChunkResult:  # fmt: skip
        """Present ``len(rates)`` samples (rates in Hz, (n, n_inputs)) and return counts and new state.

        ``learning[k]`` says whether sample k is a training sample (plasticity and threshold adaptation on);
        ``plastic`` which projections (``"XY"``, ``"YY"``) learn in those samples. ``read_synapses`` also
        returns every XY synapse's weight as the build reads it (for C: through its link into the kernels);
        ``record_voltages`` (runtime device only) every Y neuron's voltage at every step.

        ``keep_state=False``: the caller reads only the counts. A chunk of n < samples_per_chunk samples then
        costs about n samples, not a whole chunk (the binary stops after them, `ChunkResult.steps_asked`),
        with the same counts as the padded chunk; its ``state`` is None.
        """
        if self.device_name == "runtime":
            return self._run_runtime(rates, learning, state, seed, plastic, norm_target, read_synapses,
                                     record_voltages, keep_state)  # fmt: skip
        if record_voltages:
            raise ValueError("voltages are recorded on the runtime device only (device='runtime')")
        if self.built is None:
            self.prepare()
        with self._active():
            return self._run_standalone(rates, learning, state, seed, plastic, norm_target, read_synapses,
                                        keep_state)  # fmt: skip

    def _run_standalone(self, rates, learning, state, seed, plastic, norm_target, read_synapses,
                        keep_state) -> ChunkResult:  # fmt: skip
        b = self.built
        stim, schedule = self._padded_inputs(rates, learning)
        stop_after, steps_asked = self._stop_after(len(rates), keep_state)
        run_args = {
            b.stimulus: stim * b2.Hz,
            b.learning_schedule: schedule,
            b.xy_weights.w: state.xy_w,
            b.YY.w: state.yy_w,
            b.Y.theta: state.theta * b2.volt,
            b.norm_target_group.norm_target: float(norm_target),
            b.rng.seed: int(seed),
            b.rng.stop_after: stop_after,
        }
        for group, flag in _plastic_flags(b, plastic).items():
            run_args[group.plastic] = flag
        for group, name, value in b.runtime_parameters():
            run_args[getattr(group, name)] = value
        results = f"results_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        start = time.perf_counter()
        in_use = _RunArgsInUse(self.build_dir)
        children = _children()
        try:
            self._device.run(directory=str(self.build_dir), results_directory=results, with_output=False,
                             run_args=run_args)  # fmt: skip
            steps = self._steps_simulated(b)
            _check_completed(
                steps, steps_asked, self.build_dir / results, whole_chunk=stop_after > self.spec.samples_per_chunk
            )
            new_state = None
            if keep_state:
                new_state = NetworkState(
                    np.array(b.xy_weights.w[:], dtype=np.float64),
                    np.array(b.YY.w[:], dtype=np.float64),
                    np.array(b.Y.theta_[:], dtype=np.float64),
                )
            counts = spike_counts(b.spikes.i[:], b.spikes.t_[:], len(rates), self.spec.geometry.n_neurons,
                                  self.spec.steps_per_sample, self.spec.dt)  # fmt: skip
            synapse_w = np.array(b.XY.w[:], dtype=np.float64) if read_synapses else None
        except BaseException:
            _kill_new_children(children)  # before its run_args files go
            raise
        finally:
            shutil.rmtree(self.build_dir / results, ignore_errors=True)
            in_use.release()
        return ChunkResult(counts, new_state, time.perf_counter() - start, synapse_w, steps=steps,
                           steps_asked=steps_asked)  # fmt: skip

    def _run_runtime(self, rates, learning, state, seed, plastic, norm_target, read_synapses,
                     record_voltages=False, keep_state=True) -> ChunkResult:  # fmt: skip
        if self._device is None:
            self.prepare()
        with self._active():
            return self._run_runtime_active(rates, learning, state, seed, plastic, norm_target, read_synapses,
                                            record_voltages, keep_state)  # fmt: skip

    def _run_runtime_active(self, rates, learning, state, seed, plastic, norm_target, read_synapses,
                            record_voltages, keep_state) -> ChunkResult:  # fmt: skip
        stim, schedule = self._padded_inputs(rates, learning)
        stop_after, steps_asked = self._stop_after(len(rates), keep_state)
        b2.defaultclock.dt = self.spec.dt
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
        b.rng.stop_after = stop_after
        b2.seed(int(seed))
        start = time.perf_counter()
        b.network.run(self.spec.duration, namespace={})
        steps = self._steps_simulated(b)
        _check_completed(steps, steps_asked)
        new_state = None
        if keep_state:
            new_state = NetworkState(np.array(b.xy_weights.w[:], dtype=np.float64),
                                     np.array(b.YY.w[:], dtype=np.float64),
                                     np.array(b.Y.theta_[:], dtype=np.float64))  # fmt: skip
        counts = spike_counts(b.spikes.i[:], b.spikes.t_[:], len(rates), self.spec.geometry.n_neurons,
                              self.spec.steps_per_sample, self.spec.dt)  # fmt: skip
        synapse_w = np.array(b.XY.w[:], dtype=np.float64) if read_synapses else None
        voltages = np.array(b.voltages.v_[:]) * 1e3 if record_voltages else None
        spikes = (np.array(b.spikes.i[:]), np.array(b.spikes.t_[:])) if record_voltages else None
        return ChunkResult(counts, new_state, time.perf_counter() - start, synapse_w, voltages, spikes, steps,
                           steps_asked)  # fmt: skip
