"""Run a protocol: data -> compiled network -> phases in chunks -> spike counts -> readout -> run directory."""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import brian2 as b2
import numpy as np
import yaml

from . import readout
from .data import center_crop, load_dataset, pixel_rates
from .interrupts import RunInterrupted, deferred, hold, interruptible, release
from .models import ModelError, parse_quantity
from .network import NetworkSpec
from .protocol import PHASE_SPLIT, Protocol, phase_split
from .results import is_running, new_run_dir, read_json, read_npz, running_lock, write_json, write_npz, write_text
from .simulation import DeviceError, NetworkState, Simulator
from .topology import competing, competition_pairs, kernel_index, local_pairs

__all__ = ["run_protocol", "resume_run", "make_simulator", "initial_state", "read_state", "present_recorded",
           "Progress", "LearningCurve"]  # fmt: skip

logger = logging.getLogger(__name__)

#: Fixed branches of the run's seed tree for what must not disturb the run: the learning curve's evaluations
#: and the showcase. They never call ``spawn`` on a phase's stream (``spawn`` advances a counter), so a run
#: with them draws exactly the samples and seeds that the run without them draws.
EVALUATION_BRANCH = 2**31 - 1
SHOWCASE_BRANCH = 2**31 - 2


class Progress:
    """Samples done, samples/s and ETA of a phase on stderr: a tqdm bar refreshed in place on a terminal, one
    plain line per chunk elsewhere (a log file, a pipe); nothing when not ``enabled``."""

    def __init__(self, phase: str, total: int, enabled: bool = True, stream=None):
        self.phase, self.total, self.enabled = phase, total, enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = enabled and getattr(self.stream, "isatty", lambda: False)()
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            # smoothing 0: the mean rate since the start, which `exclude` corrects as it does for the lines
            self.bar = tqdm(total=total, desc=phase, unit=" samples", file=self.stream, smoothing=0,
                            dynamic_ncols=True)  # fmt: skip

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= self.total:
                self.bar.close()
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        print(f"{self.phase}: {done}/{self.total} samples, {rate:.0f} samples/s, ETA {eta:.0f} s", file=self.stream,
              flush=True)  # fmt: skip

    def note(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"{self.phase}: {line}", file=self.stream)  # above the bar, which stays in place
        else:
            print(f"{self.phase}: {line}", file=self.stream, flush=True)

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` (an evaluation) out of the samples/s."""
        self.start += seconds
        if self.bar is not None:
            self.bar.start_t += seconds


def make_simulator(protocol: Protocol, device: str | None = None, build_root=None) -> Simulator:
    """The simulator of a protocol's network structure."""
    sim = protocol["simulation"]
    models = protocol.model_files()
    spec = NetworkSpec(
        geometry=protocol.geometry,
        input=models["input"],
        neuron=models["neuron"],
        xy=models["xy"],
        normalisation=models["normalisation"],
        yy=models["yy"],
        samples_per_chunk=sim["samples_per_chunk"],
        time_per_sample=parse_quantity(sim["time_per_sample"]),
        dt=parse_quantity(sim["dt"]),
    )
    return Simulator(spec, device=device or sim["device"], build_root=build_root, float_dtype=sim["float"],
                     threads=sim["threads"])  # fmt: skip


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def initial_state(protocol: Protocol, seed_seq: np.random.SeedSequence) -> NetworkState:
    """XY weights uniform in [0, 1) (normalised before the first sample); YY = c_w (``yy_init: constant``)
    or uniform between c_w and 0 (``uniform``, the thesis's start for learned competition); theta = 0."""
    g = protocol.geometry
    net = protocol["network"]
    rng = np.random.default_rng(seed_seq)
    xy_w = rng.random(g.n_xy_parameters)  # per synapse, or per kernel entry (C)
    c_w = float(net["c_w"])
    yy_w = rng.random(g.n_yy) * c_w if net["yy_init"] == "uniform" else np.full(g.n_yy, c_w)
    yy_w[~competing(g, *competition_pairs(g))] = 0.0  # with yy_pairs "all": only competing pairs start nonzero
    return NetworkState(xy_w=xy_w, yy_w=yy_w, theta=np.zeros(g.n_neurons))


def _sample_indices(sampling: str, n: int, pool: int, rng: np.random.Generator, where: str) -> np.ndarray:
    if sampling == "with_replacement":
        return rng.integers(0, pool, size=n)
    if n > pool:
        raise ValueError(f"{where}: {n} samples without replacement, but the split has only {pool}")
    if sampling == "shuffled":
        return rng.permutation(pool)[:n]
    return np.arange(n)


def _git_checkout(root: Path | None = None) -> tuple[str | None, bool | None]:
    """The commit of the git checkout the package runs from (a clone, an editable install) and whether its
    tracked files differ from it; ``(None, None)`` when installed from a wheel or an index (or without git)."""
    import subprocess

    root = root or Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():  # a wheel's site-packages (even one inside some other repository) has none
        return None, None
    out = []
    for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]):
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):  # no git program, or it hangs
            return None, None
        if done.returncode:  # e.g. a checkout git refuses to read (another owner)
            return None, None
        out.append(done.stdout.strip())
    return out[0], bool(out[1])


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in (
        "brian-lcsnn",
        "brian2",
        "numpy",
        "scikit-learn",
        "pyyaml",
        "pandas",
        "matplotlib",
        "seaborn",
        "sympy",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["git_commit"], versions["git_dirty"] = _git_checkout()  # None, None: not run from a checkout
    return versions


@dataclass
class PhaseOutcome:
    counts: np.ndarray | None
    labels: np.ndarray
    indices: np.ndarray
    wall_seconds: float
    sim_seconds: float
    evaluation_seconds: float = 0.0


def _branch(seq: np.random.SeedSequence, *keys: int) -> np.random.SeedSequence:
    """A child of ``seq`` named by ``keys``, without advancing ``seq``'s spawn counter."""
    return np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, *keys))


def _chunk_seed(seq: np.random.SeedSequence) -> int:
    return int(seq.generate_state(1)[0] & 0x7FFFFFFF)


def _rates(protocol: Protocol, images: np.ndarray) -> np.ndarray:
    intensity = float(parse_quantity(protocol["dataset"]["intensity"]) / b2.Hz)
    return pixel_rates(center_crop(images, protocol["dataset"]["crop"]), intensity)


def _norm_target(protocol: Protocol) -> float:
    return protocol["network"]["mean_weight"] * protocol.geometry.kernel_size**2


def _frozen_counts(sim: Simulator, protocol: Protocol, images: np.ndarray, state: NetworkState,
                   seq: np.random.SeedSequence) -> np.ndarray:  # fmt: skip
    """Y spike counts of ``images`` with learning off; the state the chunks return is dropped, so the run's
    weights and thresholds stay exactly as they were."""
    K = sim.spec.samples_per_chunk
    counts = []
    for c, start in enumerate(range(0, len(images), K)):
        part = images[start : start + K]
        result = sim.run_chunk(_rates(protocol, part), np.zeros(len(part)), state, seed=_chunk_seed(_branch(seq, c)),
                               plastic={}, norm_target=_norm_target(protocol), keep_state=False)  # fmt: skip
        counts.append(result.counts)
    return np.concatenate(counts)


class LearningCurve:
    """A train phase's learning curve: every ``evaluate_every`` training samples (and before the first), the
    first ``evaluate.calibrate`` calibration images calibrate the votes and the linear readout and the first
    ``evaluate.test`` test images are scored by every readout, all with learning off.

    Each point is written to ``curves/<phase>.json`` as soon as it exists (``save(document)``), so a resumed
    run keeps the points it has; its samples and seeds come from `EVALUATION_BRANCH` of the phase's stream.
    """

    def __init__(self, phase: dict, protocol: Protocol, dataset, seq: np.random.SeedSequence, points=(), save=None):
        self.phase, self.protocol, self.save = phase, protocol, save
        self.every, self.sizes = phase["evaluate_every"], phase["evaluate"]
        self.sets = {key: tuple(a[:n] for a in dataset.split(PHASE_SPLIT[key])) for key, n in self.sizes.items()}
        self.seq = _branch(seq, EVALUATION_BRANCH)
        self.points = sorted(points, key=lambda p: p["samples"])

    def document(self) -> dict:
        return {"phase": self.phase["name"], "evaluate_every": self.every, **self.sizes, "points": self.points}

    def due(self, done: int) -> bool:
        return (done % self.every == 0 or done == self.phase["n"]) and done not in {p["samples"] for p in self.points}

    def evaluate(self, sim: Simulator, state: NetworkState, done: int) -> dict:
        """Score the network as it is after ``done`` training samples; appends, saves and returns the point."""
        start = time.perf_counter()
        g, ro = self.protocol.geometry, self.protocol["readout"]
        seq = _branch(self.seq, done)
        shaped = {}
        for k, (key, (images, labels)) in enumerate(self.sets.items()):
            counts = _frozen_counts(sim, self.protocol, images, state, _branch(seq, k))
            shaped[key] = counts.reshape(len(counts), g.n_filters, g.n_locations), labels
        (cal, cal_labels), (test, test_labels) = shaped["calibrate"], shaped["test"]
        votes = readout.compute_votes(cal, cal_labels)
        linear = None
        if ro["linear"] and len(np.unique(cal_labels)) > 1:
            linear = readout.LinearReadout(ro["linear"], seed=self.protocol["seed"]).fit(cal, cal_labels)
        scores = readout.evaluate(test, test_labels, votes, linear, top_n=tuple(ro["top_n"]))
        point = {"samples": done, "seconds": round(time.perf_counter() - start, 3), "scores": scores}
        self.points = sorted([*self.points, point], key=lambda p: p["samples"])
        if self.save is not None:
            self.save(self.document())
        return point


def _summary(scores: dict) -> str:
    method, best = readout.best_voting(scores)
    linear = f", linear {scores['linear']['accuracy']:.3f}" if "linear" in scores else ""
    return f"{method} {best['accuracy']:.3f}{linear}"


def _run_phase(sim: Simulator, phase: dict, images: np.ndarray, labels: np.ndarray, state: NetworkState,
               protocol: Protocol, seq: np.random.SeedSequence, progress: bool, checkpoint=None,
               resume: dict | None = None, curve: LearningCurve | None = None, keep_state: bool = True):  # fmt: skip
    """Present a phase's samples chunk by chunk; ``checkpoint(chunk, state, counts)`` runs after each chunk.

    ``keep_state=False`` (counts only, the returned state is None): a last, partial chunk costs only its samples.

    Every random choice (the samples, each chunk's seed) follows from ``seq`` alone, so a phase resumed at a
    chunk (``resume = {"chunk": c, "counts": counts so far}``) continues exactly as it would have. A
    ``curve`` evaluates between chunks (after the checkpoint) without touching the state that is carried on.
    """
    rng = np.random.default_rng(seq.spawn(1)[0])
    indices = _sample_indices(phase["sampling"], phase["n"], len(images), rng, f"phase {phase['name']}")
    training = phase["type"] == "train"
    K = sim.spec.samples_per_chunk
    first = resume["chunk"] if resume else 0
    counts = [resume["counts"]] if resume and resume["counts"] is not None and len(resume["counts"]) else []
    meter = Progress(phase["name"], phase["n"], progress)
    start = time.perf_counter()
    sim_seconds = evaluation_seconds = 0.0
    chunk_seeds = seq.spawn((len(indices) + K - 1) // K)

    def evaluate(done: int) -> None:
        nonlocal evaluation_seconds
        if curve is None or not curve.due(done):
            return
        sizes = curve.sizes
        meter.note(f"evaluating after {done} samples (calibrate {sizes['calibrate']}, test {sizes['test']})")
        point = curve.evaluate(sim, state, done)
        evaluation_seconds += point["seconds"]
        meter.exclude(point["seconds"])
        meter.note(f"after {done} samples: {_summary(point['scores'])} ({point['seconds']:.1f} s)")

    evaluate(min(first * K, phase["n"]))  # before the first sample, or a point a killed run did not write
    for c in range(first, len(chunk_seeds)):
        idx = indices[c * K : (c + 1) * K]
        result = sim.run_chunk(
            _rates(protocol, images[idx]),
            np.full(len(idx), 1.0 if training else 0.0),
            state,
            seed=_chunk_seed(chunk_seeds[c]),
            plastic={name: name in phase.get("learn", ()) for name in ("XY", "YY")},
            norm_target=_norm_target(protocol),
            keep_state=keep_state,
        )
        state = result.state
        sim_seconds += result.seconds
        if not training:
            counts.append(result.counts)
        if checkpoint is not None:
            checkpoint(c + 1, state, np.concatenate(counts) if counts else None)
        meter.update(c * K + len(idx))
        evaluate(c * K + len(idx))
    wall = time.perf_counter() - start
    outcome = PhaseOutcome(np.concatenate(counts) if counts else None, labels[indices], indices, wall, sim_seconds,
                           evaluation_seconds)  # fmt: skip
    return state, outcome


def run_protocol(protocol: Protocol, results_root: Path, *, device: str | None = None, build_root=None,
                 progress: bool = True, tags: dict | None = None) -> Path:  # fmt: skip
    """Run every phase of ``protocol`` and write a run directory under ``results_root``; returns its path.

    ``tags`` (JSON-able) go into ``run.json`` as they are: a sweep names itself and the trial there.

    Everything that can fail on bad input (data, model equations, compilation) happens before the run
    directory is created, so a failed start leaves nothing behind. The run checkpoints after every chunk of
    samples; `resume_run` finishes an interrupted run with the same result as an uninterrupted one.
    """
    with interruptible():
        return _run_protocol(protocol, results_root, device, build_root, progress, tags)


def _run_protocol(protocol: Protocol, results_root: Path, device, build_root, progress: bool, tags) -> Path:
    from .checks import check_protocol
    from .results import check_results_root

    check_results_root(Path(results_root))  # before compiling: a results folder that cannot be written
    check_protocol(protocol)  # what lcsnn check finds (equations on the runtime device, data set's files): no compile
    dataset, sim, compile_seconds = _prepare(protocol, device, build_root, progress)
    hold()  # a signal from here on waits for run.json: no run directory without one
    run_dir = new_run_dir(Path(results_root), protocol.name)
    _write_protocol(run_dir, protocol)
    info = {
        "id": run_dir.name,
        "name": protocol.name,
        "protocol_file": str(protocol.path),
        "status": "running",
        "seed": protocol["seed"],
        "device": sim.device_name,
        "float": sim.float_dtype,
        "threads": sim.threads,
        "build": _build_info(sim, compile_seconds),
        "sizes": protocol.geometry.sizes(),
        "dataset": {"name": dataset.name, "source": dataset.source},
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tags": dict(tags or {}),
        "phases": [],
    }
    with running_lock(run_dir):
        write_json(run_dir / "run.json", info)
        try:
            release()
        except RunInterrupted as err:
            _mark_interrupted(run_dir, info, err)
            raise
        return _execute(protocol, run_dir, info, dataset, sim, progress, checkpoint=None)


def _build_record(sim: Simulator, compile_seconds: float) -> dict:
    return {"key": sim.key, "directory": str(sim.build_dir), "compiled": sim.compiled_now,
            "prepare_seconds": round(compile_seconds, 3)}  # fmt: skip


def _mark_interrupted(run_dir: Path, info: dict, err: RunInterrupted) -> None:
    """run.json says ``interrupted``, and ``err`` names the run directory."""
    err.run_dir = run_dir
    info["status"] = "interrupted"
    info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_json(run_dir / "run.json", info)


def resume_run(run_dir: Path, *, device: str | None = None, build_root=None, progress: bool = True) -> Path:
    """Finish an interrupted or failed run from its last checkpoint (a finished run is left as it is)."""
    from .results import RunError

    run_dir = Path(run_dir)
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError) as err:
        raise RunError(f"{run_dir}: not a readable run directory ({err})") from None
    if info.get("status") == "finished":
        return run_dir
    if is_running(run_dir):
        raise RunError(f"{run_dir}: is being run by another process")
    with interruptible():
        try:
            return _resume(run_dir, device, build_root, progress)
        except RunInterrupted as err:
            err.run_dir = run_dir  # as it was, or marked interrupted: resumable again
            raise


def _resume(run_dir: Path, device, build_root, progress: bool) -> Path:
    from .protocol import load_protocol

    protocol = load_protocol(run_dir / "protocol.yaml")
    dataset, sim, compile_seconds = _prepare(protocol, device, build_root, progress)
    with running_lock(run_dir):
        info = read_json(run_dir / "run.json")  # as the last process left it
        if info.get("status") == "finished":
            return run_dir
        checkpoint = _load_checkpoint(run_dir)
        info["status"] = "running"
        info["resumed"] = info.get("resumed", 0) + 1
        info.pop("error", None)
        # "device" is the one the run goes on with; every resume's device and build are listed
        info["device"], info["float"], info["threads"] = sim.device_name, sim.float_dtype, sim.threads
        info.setdefault("resumes", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "device": sim.device_name,
                                               "build": _build_record(sim, compile_seconds)})  # fmt: skip
        return _execute(protocol, run_dir, info, dataset, sim, progress, checkpoint)


def _build_info(sim: Simulator, prepare_seconds: float) -> dict:
    """run.json's ``build``: the key and folder, compiled or reused, the prepare time, and on CUDA what
    `cuda.apply_cuda_fixes` set (C++17, the cuRAND it found)."""
    build = {"key": sim.key, "directory": str(sim.build_dir), "compiled": sim.compiled_now,
             "prepare_seconds": round(prepare_seconds, 3)}  # fmt: skip
    if sim.cuda_fixes:
        build["cuda_fixes"] = dict(sim.cuda_fixes)
    return build


def _prepare(protocol: Protocol, device, build_root, progress: bool = False):
    ds = protocol["dataset"]
    dataset = load_dataset(ds["name"], ds["path"], progress=progress)
    _check_split_sizes(protocol, dataset)  # before compiling
    sim = make_simulator(protocol, device, build_root)
    logger.info("preparing %s on %s", protocol.name, sim.device_name)
    try:
        compile_seconds = sim.prepare(progress)
    except DeviceError:
        raise
    except Exception as err:  # Brian2's errors on a wrong equation are long: keep the root cause's first line
        signum = _compile_signal(err)
        if signum is not None:  # make was stopped by Ctrl-C (os.system ignores SIGINT in this process meanwhile)
            raise RunInterrupted(signum) from None
        raise ModelError(
            f"{protocol.path}: the network cannot be built from its model files: {_root_cause(err)}"
        ) from err
    return dataset, sim, compile_seconds


def _compile_signal(err: BaseException) -> int | None:
    """The signal (SIGINT, SIGTERM) that stopped Brian2's compilation, from its "Project compilation failed
    (error code: N)", N being the wait status of ``sh -c make``: killed by the signal, or exited 128 + it."""
    import re

    found = re.search(r"Project compilation failed \(error code: (\d+)\)", str(err))
    if not found:
        return None
    status = int(found.group(1))
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
    elif os.WIFEXITED(status) and os.WEXITSTATUS(status) > 128:
        signum = os.WEXITSTATUS(status) - 128
    else:
        return None
    return signum if signum in (signal.SIGINT, signal.SIGTERM) else None


def _write_protocol(run_dir: Path, protocol: Protocol) -> None:
    """The resolved protocol, with copies of its model files, so that the run directory stands alone."""
    data = dict(protocol.data)
    data["models"] = {}
    for role, model in protocol.model_files().items():
        write_text(run_dir / "models" / f"{role}.yaml", model.path.read_text())
        data["models"][role] = f"models/{role}.yaml"
    write_text(run_dir / "protocol.yaml", yaml.safe_dump(data, sort_keys=False))


def _load_checkpoint(run_dir: Path) -> dict | None:
    path = run_dir / "checkpoint.npz"
    if not path.exists():
        return None
    return read_npz(path, ("xy_w", "yy_w", "theta", "phase", "chunk", "counts"))


def _execute(protocol: Protocol, run_dir: Path, info: dict, dataset, sim: Simulator, progress: bool,
             checkpoint: dict | None) -> Path:  # fmt: skip
    g = protocol.geometry
    root_seq = np.random.SeedSequence(protocol["seed"])
    init_seq, *phase_seqs = root_seq.spawn(1 + len(protocol["phases"]))
    state = initial_state(protocol, init_seq)
    done_phases, resume = 0, None
    if checkpoint is not None:
        state = NetworkState(checkpoint["xy_w"], checkpoint["yy_w"], checkpoint["theta"])
        done_phases = int(checkpoint["phase"])
        counts = checkpoint["counts"] if checkpoint["counts"].size else None
        resume = {"chunk": int(checkpoint["chunk"]), "counts": counts}
        info["phases"] = info["phases"][:done_phases]
    scores = read_json(run_dir / "scores.json") if done_phases and (run_dir / "scores.json").exists() else {}
    votes, linear = _load_readouts(run_dir) if done_phases else (None, None)

    def save_checkpoint(phase_index, chunk, state, counts):
        empty = np.zeros((0, g.n_neurons), dtype=np.uint16)
        write_npz(run_dir / "checkpoint.npz", xy_w=state.xy_w, yy_w=state.yy_w, theta=state.theta,
                  phase=phase_index, chunk=chunk, counts=empty if counts is None else counts)  # fmt: skip

    try:
        for k, (phase, seq) in enumerate(zip(protocol["phases"], phase_seqs, strict=True)):
            if k < done_phases:
                continue
            if phase["type"] in ("lock", "unlock", "clear"):
                state = _set_projection(state, phase)
                if phase["type"] != "unlock":
                    _write_state(run_dir, phase["name"], g, state)
                info["phases"].append(dict(phase))
                save_checkpoint(k + 1, 0, state, None)
                write_json(run_dir / "run.json", info)
                continue
            images, labels = _phase_images(dataset, phase)
            phase_resume = resume if k == done_phases else None
            curve = _learning_curve(run_dir, phase, protocol, dataset, seq, sim, phase_resume)
            state, out = _run_phase(
                sim, phase, images, labels, state, protocol, seq, progress,
                checkpoint=lambda chunk, st, counts, k=k: save_checkpoint(k, chunk, st, counts),
                resume=phase_resume, curve=curve,
            )  # fmt: skip
            _write_state(run_dir, phase["name"], g, state)  # after every phase: a reload starts from any of them
            learning_seconds = out.wall_seconds - out.evaluation_seconds
            record = {**phase, "wall_seconds": round(out.wall_seconds, 3),
                      "simulation_seconds": round(out.sim_seconds, 3),
                      "samples_per_second": round(phase["n"] / max(learning_seconds, 1e-9), 2)}  # fmt: skip
            if curve is not None:  # the samples/s above leave the evaluations out
                record["curve"] = f"curves/{phase['name']}.json"
                record["evaluation_seconds"] = round(out.evaluation_seconds, 3)
            if out.counts is not None:
                write_npz(
                    run_dir / "counts" / f"{phase['name']}.npz",
                    counts=out.counts,
                    labels=out.labels,
                    image_indices=out.indices + phase_split(phase)[1],
                )  # fmt: skip  (within the split)
                shaped = out.counts.reshape(len(out.counts), g.n_filters, g.n_locations)
                record["no_spike_samples"] = int((out.counts.sum(axis=1) == 0).sum())
                record["mean_spikes_per_sample"] = round(float(out.counts.sum(axis=1).mean()), 2)
            if phase["type"] == "calibrate":
                t0 = time.perf_counter()
                votes = readout.compute_votes(shaped, out.labels)
                write_npz(run_dir / "readout" / "votes.npz", votes=votes)
                linear = None
                if protocol["readout"]["linear"]:
                    linear = readout.LinearReadout(protocol["readout"]["linear"], seed=protocol["seed"])
                    linear.fit(shaped, out.labels)
                    write_npz(run_dir / "readout" / "linear.npz", **linear.to_arrays())
                record["readout_seconds"] = round(time.perf_counter() - t0, 3)
            if phase["type"] == "test":
                scores[phase["name"]] = readout.evaluate(shaped, out.labels, votes, linear,
                                                         top_n=tuple(protocol["readout"]["top_n"]))  # fmt: skip
                write_json(run_dir / "scores.json", scores)
            info["phases"].append(record)
            save_checkpoint(k + 1, 0, state, None)
            write_json(run_dir / "run.json", info)
        _write_state(run_dir, None, g, state)
        headline = readout.headline_test_phase(protocol["phases"])
        if protocol["readout"]["showcase"] and headline:
            start = time.perf_counter()
            _write_showcase(run_dir, protocol, dataset, sim, state, votes, linear, headline, root_seq)
            info["showcase_seconds"] = round(time.perf_counter() - start, 3)
            if progress:
                print(f"showcase: {protocol['readout']['showcase']} test samples with voltages and spike times, "
                      f"{info['showcase_seconds']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        info["status"] = "finished"
    except KeyboardInterrupt as err:  # the unfinished chunk is not in the checkpoint: a resume redoes it
        info["status"] = "interrupted"
        if not isinstance(err, RunInterrupted):
            raise RunInterrupted(signal.SIGINT, run_dir) from err
        err.run_dir = run_dir
        raise
    except Exception as err:
        info["status"] = "failed"
        info["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        # a signal now is dropped: the run ends anyway, as finished, failed or already interrupted
        with deferred(raise_after=False):
            info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json(run_dir / "run.json", info)
            if info["status"] == "finished":
                (run_dir / "checkpoint.npz").unlink(missing_ok=True)
    return run_dir


def _learning_curve(run_dir: Path, phase: dict, protocol: Protocol, dataset, seq, sim: Simulator,
                    resume: dict | None) -> LearningCurve | None:  # fmt: skip
    """The phase's `LearningCurve` (None without ``evaluate_every``); resumed, with the points already written."""
    if not phase.get("evaluate_every"):
        return None
    path = run_dir / "curves" / f"{phase['name']}.json"
    points = []
    if resume is not None and path.exists():  # the points up to the checkpoint (later ones are recomputed)
        reached = resume["chunk"] * sim.spec.samples_per_chunk
        points = [p for p in read_json(path)["points"] if p["samples"] <= reached]
    return LearningCurve(phase, protocol, dataset, seq, points, save=lambda doc: write_json(path, doc))


def _phase_images(dataset, phase: dict):
    """The images and labels a train, calibrate or test phase draws from (its split, less the skipped start)."""
    split, skip = phase_split(phase)
    images, labels = dataset.split(split)
    return images[skip:], labels[skip:]


def _check_split_sizes(protocol: Protocol, dataset) -> None:
    """The phases and the learning curves' subsets fit the data set's splits (and its images the crop, its
    labels 0..9, the phases the memory), before anything runs."""
    from .checks import check_dataset

    check_dataset(protocol, dataset)


def present_recorded(protocol: Protocol, state: NetworkState, votes: np.ndarray, linear, images: np.ndarray,
                     seed: int = 0, spec: NetworkSpec | None = None) -> dict:  # fmt: skip
    """Present uint8 images (n, 28, 28) with learning off on the runtime device (numpy: no compile), recording
    every step's Y voltage and every Y spike; the state is left as it is.

    Returns per sample: ``counts`` (n, F, L); ``predictions`` {method: (n,)} of every voting rule and the
    linear readout (-1: no spike); ``scores`` (n, 10) of patch voting; for the best voter of each location (by
    patch voting: the filter whose spikes times votes for the prediction are largest; where no filter of a
    location votes, the one whose voltage came closest to its threshold) ``best_voters`` (n, L),
    ``best_voltages_mV`` (n, L, steps) and ``threshold_mV`` (n, L: v_thresh + theta); every Y spike as
    ``spike_sample``, ``spike_neuron`` and ``spike_time_ms`` (from the start of its sample). ``spec``: the
    structure of a running simulator (its model files as loaded then), else the protocol's.
    """
    g, n = protocol.geometry, len(images)
    spec = replace(spec or make_simulator(protocol).spec, samples_per_chunk=n)  # one chunk of n samples
    sim = Simulator(spec, device="runtime", float_dtype=protocol["simulation"]["float"])
    sim.prepare()
    out = sim.run_chunk(_rates(protocol, images), np.zeros(n), state, seed=seed, plastic={},
                        norm_target=_norm_target(protocol), record_voltages=True)  # fmt: skip
    counts = out.counts.reshape(n, g.n_filters, g.n_locations)
    predictions = {m: readout.predict(readout.voting_scores(counts, votes, m), counts) for m in readout.VOTING_METHODS}
    if linear is not None:
        predictions["linear"] = linear.predict(counts)
    scores = readout.voting_scores(counts, votes, "patch_voting")
    contribution = counts * votes[np.maximum(predictions["patch_voting"], 0)]  # (n, F, L)
    steps = sim.spec.steps_per_sample
    voltages = out.voltages[:, : n * steps].reshape(g.n_neurons, n, steps).transpose(1, 0, 2)
    v_thresh = spec.neuron.parameters.get("v_thresh")
    v_thresh_mV = float(v_thresh / b2.mV) if v_thresh is not None else np.nan
    # A location whose filters cast no vote has no best voter by patch voting: show the filter that came
    # closest to its threshold instead (peak v - θ; the same v_thresh for all), not filter 0 by default.
    closest = (voltages.max(axis=2) - state.theta * 1e3).reshape(n, g.n_filters, g.n_locations)
    silent = ~contribution.any(axis=1)  # (n, L)
    best_filter = np.where(silent, closest.argmax(axis=1), contribution.argmax(axis=1))
    best = best_filter * g.n_locations + np.arange(g.n_locations)  # (n, L) neuron indices
    dt_ms = float(sim.spec.dt / b2.ms)
    neuron, times = out.spikes
    step = np.rint(np.asarray(times) / float(sim.spec.dt)).astype(np.int64)
    keep = step < n * steps  # the silent extra step after the last sample
    return {
        "counts": counts,
        "predictions": predictions,
        "scores": scores,
        "best_voters": best,
        "best_voltages_mV": np.take_along_axis(voltages, best[:, :, None], axis=1),
        "threshold_mV": v_thresh_mV + state.theta[best] * 1e3,
        "spike_sample": step[keep] // steps,
        "spike_neuron": np.asarray(neuron, dtype=np.int64)[keep],
        "spike_time_ms": (step[keep] % steps) * dt_ms,
        "dt_ms": dt_ms,
    }


def _write_showcase(run_dir: Path, protocol: Protocol, dataset, sim: Simulator, state: NetworkState, votes, linear,
                    test: str, root_seq: np.random.SeedSequence) -> None:  # fmt: skip
    """``showcase.npz``: the first ``readout.showcase`` samples of the headline (last) test phase presented once
    more with the final state (`present_recorded`), for the figures of voltages, spike times and predictions."""
    with np.load(run_dir / "counts" / f"{test}.npz", allow_pickle=False) as data:
        indices = data["image_indices"][: protocol["readout"]["showcase"]]
    images, labels = dataset.split(phase_split(next(p for p in protocol["phases"] if p["name"] == test))[0])
    seed = _chunk_seed(_branch(root_seq, SHOWCASE_BRANCH))
    shown = present_recorded(protocol, state, votes, linear, images[indices], seed, sim.spec)
    methods = list(shown.pop("predictions").items())
    write_npz(run_dir / "showcase.npz", images=images[indices], labels=labels[indices], image_indices=indices,
              phase=np.array(test), methods=np.array([m for m, _ in methods]),
              predictions=np.stack([p for _, p in methods], axis=1), crop=protocol["dataset"]["crop"],
              **{key: value for key, value in shown.items() if key != "scores"})  # fmt: skip


def _load_readouts(run_dir: Path):
    votes_path, linear_path = run_dir / "readout" / "votes.npz", run_dir / "readout" / "linear.npz"
    votes = read_npz(votes_path, ("votes",))["votes"] if votes_path.exists() else None
    linear = None
    if linear_path.exists():
        linear = readout.LinearReadout.from_arrays(read_npz(linear_path))
    return votes, linear


def _set_projection(state: NetworkState, phase: dict) -> NetworkState:
    """lock (at ``value``, if given) and clear (to 0) change weights between phases; unlock changes none."""
    state = state.copy()
    attr = {"XY": "xy_w", "YY": "yy_w"}[phase["projection"]]
    value = 0.0 if phase["type"] == "clear" else phase.get("value")
    if value is not None:
        getattr(state, attr)[:] = value
    return state


def read_state(path: Path, geometry) -> NetworkState:
    """A state written by `_write_state` (``state.npz`` or ``states/<phase>.npz``)."""
    data = read_npz(path, ("kernels" if geometry.architecture == "C" else "xy_w", "yy_w", "theta"))
    xy_w = data["kernels"].ravel() if geometry.architecture == "C" else data["xy_w"]
    return NetworkState(np.array(xy_w, dtype=np.float64), np.array(data["yy_w"]), np.array(data["theta"]))


def _write_state(run_dir: Path, phase: str | None, geometry, state: NetworkState) -> None:
    """The state (``state.npz``, or ``states/<phase>.npz``) and the competition weights' histogram."""
    xy_i, xy_j = local_pairs(geometry)  # the build's synapse order (checked by the tests)
    yy_i, yy_j = competition_pairs(geometry)
    path = run_dir / "state.npz" if phase is None else run_dir / "states" / f"{phase}.npz"
    xy_w, extra = state.xy_w, {}
    if geometry.architecture == "C":  # every synapse's weight is its kernel entry
        xy_w = state.xy_w[kernel_index(geometry)]
        extra["kernels"] = state.xy_w.reshape(geometry.n_filters, geometry.kernel_size, geometry.kernel_size)
    write_npz(path, xy_w=xy_w, xy_i=xy_i, xy_j=xy_j, yy_w=state.yy_w, yy_i=yy_i, yy_j=yy_j, theta=state.theta,
              **extra)  # fmt: skip
    weights = state.yy_w[competing(geometry, yy_i, yy_j)]
    if len(weights):
        counts, edges = np.histogram(weights, bins=50)
        write_npz(run_dir / "competition" / f"{phase or 'final'}.npz", weights=weights, counts=counts, edges=edges)
