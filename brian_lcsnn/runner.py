"""Run a protocol: data -> compiled network -> phases in chunks -> spike counts -> readout -> run directory."""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import brian2 as b2
import numpy as np
import yaml

from . import readout
from .data import center_crop, load_dataset, pixel_rates
from .models import ModelError, parse_quantity
from .network import NetworkSpec
from .protocol import PHASE_SPLIT, Protocol
from .results import new_run_dir, read_json, write_json, write_npz, write_text
from .simulation import DeviceError, NetworkState, Simulator
from .topology import competing, competition_pairs, kernel_index, local_pairs

__all__ = ["run_protocol", "resume_run", "make_simulator", "initial_state", "read_state", "Progress"]

logger = logging.getLogger(__name__)


class Progress:
    """Samples done, samples/s and ETA of a phase, on stderr (one refreshed line on a terminal)."""

    def __init__(self, phase: str, total: int, enabled: bool = True, stream=None):
        self.phase, self.total, self.enabled = phase, total, enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.tty = getattr(stream, "isatty", lambda: False)()

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = f"{self.phase}: {done}/{self.total} samples, {rate:.0f} samples/s, ETA {eta:.0f} s"
        end = "\r" if self.tty and done < self.total else "\n"
        print(line, end=end, file=self.stream, flush=True)


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


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("brian-lcsnn", "brian2", "numpy", "scikit-learn", "pyyaml", "pandas", "matplotlib", "seaborn", "sympy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


@dataclass
class PhaseOutcome:
    counts: np.ndarray | None
    labels: np.ndarray
    indices: np.ndarray
    wall_seconds: float
    sim_seconds: float


def _run_phase(sim: Simulator, phase: dict, images: np.ndarray, labels: np.ndarray, state: NetworkState,
               protocol: Protocol, seq: np.random.SeedSequence, progress: bool, checkpoint=None,
               resume: dict | None = None):  # fmt: skip
    """Present a phase's samples chunk by chunk; ``checkpoint(chunk, state, counts)`` runs after each chunk.

    Every random choice (the samples, each chunk's seed) follows from ``seq`` alone, so a phase resumed at a
    chunk (``resume = {"chunk": c, "counts": counts so far}``) continues exactly as it would have.
    """
    crop = protocol["dataset"]["crop"]
    intensity = float(parse_quantity(protocol["dataset"]["intensity"]) / b2.Hz)
    rng = np.random.default_rng(seq.spawn(1)[0])
    indices = _sample_indices(phase["sampling"], phase["n"], len(images), rng, f"phase {phase['name']}")
    training = phase["type"] == "train"
    K = sim.spec.samples_per_chunk
    first = resume["chunk"] if resume else 0
    counts = [resume["counts"]] if resume and resume["counts"] is not None and len(resume["counts"]) else []
    meter = Progress(phase["name"], phase["n"], progress)
    start = time.perf_counter()
    sim_seconds = 0.0
    chunk_seeds = seq.spawn((len(indices) + K - 1) // K)
    for c in range(first, len(chunk_seeds)):
        idx = indices[c * K : (c + 1) * K]
        rates = pixel_rates(center_crop(images[idx], crop), intensity)
        result = sim.run_chunk(
            rates,
            np.full(len(idx), 1.0 if training else 0.0),
            state,
            seed=int(chunk_seeds[c].generate_state(1)[0] & 0x7FFFFFFF),
            plastic={name: name in phase.get("learn", ()) for name in ("XY", "YY")},
            norm_target=protocol["network"]["mean_weight"] * protocol.geometry.kernel_size**2,
        )
        state = result.state
        sim_seconds += result.seconds
        if not training:
            counts.append(result.counts)
        if checkpoint is not None:
            checkpoint(c + 1, state, np.concatenate(counts) if counts else None)
        meter.update(c * K + len(idx))
    wall = time.perf_counter() - start
    outcome = PhaseOutcome(np.concatenate(counts) if counts else None, labels[indices], indices, wall, sim_seconds)
    return state, outcome


def run_protocol(protocol: Protocol, results_root: Path, *, device: str | None = None, build_root=None,
                 progress: bool = True, tags: dict | None = None) -> Path:  # fmt: skip
    """Run every phase of ``protocol`` and write a run directory under ``results_root``; returns its path.

    ``tags`` (JSON-able) go into ``run.json`` as they are: a sweep names itself and the trial there.

    Everything that can fail on bad input (data, model equations, compilation) happens before the run
    directory is created, so a failed start leaves nothing behind. The run checkpoints after every chunk of
    samples; `resume_run` finishes an interrupted run with the same result as an uninterrupted one.
    """
    dataset, sim, compile_seconds = _prepare(protocol, device, build_root)
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
        "build": {"key": sim.key, "directory": str(sim.build_dir), "compiled": sim.compiled_now,
                  "prepare_seconds": round(compile_seconds, 3)},  # fmt: skip
        "sizes": protocol.geometry.sizes(),
        "dataset": {"name": dataset.name, "source": dataset.source},
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tags": dict(tags or {}),
        "phases": [],
    }
    write_json(run_dir / "run.json", info)
    return _execute(protocol, run_dir, info, dataset, sim, progress, checkpoint=None)


def resume_run(run_dir: Path, *, device: str | None = None, build_root=None, progress: bool = True) -> Path:
    """Finish an interrupted or failed run from its last checkpoint (a finished run is left as it is)."""
    from .protocol import load_protocol
    from .results import RunError

    run_dir = Path(run_dir)
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError) as err:
        raise RunError(f"{run_dir}: not a readable run directory ({err})") from None
    if info.get("status") == "finished":
        return run_dir
    protocol = load_protocol(run_dir / "protocol.yaml")
    dataset, sim, _ = _prepare(protocol, device, build_root)
    checkpoint = _load_checkpoint(run_dir)
    info["status"] = "running"
    info["resumed"] = info.get("resumed", 0) + 1
    info.pop("error", None)
    return _execute(protocol, run_dir, info, dataset, sim, progress, checkpoint)


def _prepare(protocol: Protocol, device, build_root):
    ds = protocol["dataset"]
    dataset = load_dataset(ds["name"], ds["path"])
    sim = make_simulator(protocol, device, build_root)
    logger.info("preparing %s on %s", protocol.name, sim.device_name)
    try:
        compile_seconds = sim.prepare()
    except DeviceError:
        raise
    except Exception as err:  # Brian2's errors on a wrong equation are long: keep the root cause's first line
        raise ModelError(f"{protocol.path}: the network cannot be built from its model files: {_root_cause(err)}") from err
    return dataset, sim, compile_seconds


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
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


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
            images, labels = dataset.split(PHASE_SPLIT[phase["type"]])
            state, out = _run_phase(
                sim, phase, images, labels, state, protocol, seq, progress,
                checkpoint=lambda chunk, st, counts, k=k: save_checkpoint(k, chunk, st, counts),
                resume=resume if k == done_phases else None,
            )  # fmt: skip
            _write_state(run_dir, phase["name"], g, state)  # after every phase: a reload starts from any of them
            record = {**phase, "wall_seconds": round(out.wall_seconds, 3), "simulation_seconds": round(out.sim_seconds, 3),
                      "samples_per_second": round(phase["n"] / max(out.wall_seconds, 1e-9), 2)}  # fmt: skip
            if out.counts is not None:
                write_npz(run_dir / "counts" / f"{phase['name']}.npz", counts=out.counts, labels=out.labels,
                          image_indices=out.indices)  # fmt: skip
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
        info["status"] = "finished"
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        raise
    except Exception as err:
        info["status"] = "failed"
        info["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        info["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_json(run_dir / "run.json", info)
    (run_dir / "checkpoint.npz").unlink(missing_ok=True)
    return run_dir


def _load_readouts(run_dir: Path):
    votes_path, linear_path = run_dir / "readout" / "votes.npz", run_dir / "readout" / "linear.npz"
    votes = np.load(votes_path)["votes"] if votes_path.exists() else None
    linear = None
    if linear_path.exists():
        with np.load(linear_path, allow_pickle=False) as data:
            linear = readout.LinearReadout.from_arrays({key: data[key] for key in data.files})
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
    with np.load(path, allow_pickle=False) as data:
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

