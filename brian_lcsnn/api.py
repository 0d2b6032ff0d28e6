"""Stored runs in Python (notebooks): reload a run, re-run its phases exactly, predict on any images.

    >>> from brian_lcsnn.api import load_run
    >>> run = load_run("results/20261130-115247-lc100_k12-87457d")
    >>> run.scores["test"]["patch_voting"]["accuracy"]
    >>> run.rerun("test")                     # re-simulates the test phase: the stored scores, to the last digit
    >>> run.feed_label(7)                      # a random calibration-set 7: prediction and Y spike counts

The adaptive thresholds are part of the stored state (the thesis lost them on reloading, 0.823 -> 0.75).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import readout
from .data import load_dataset
from .protocol import Protocol, load_protocol
from .results import RunError, read_run_file
from .runner import _load_readouts, _phase_images, _prepare, _run_phase, present_recorded, read_state
from .simulation import NetworkState, Simulator

__all__ = ["LoadedRun", "load_run", "read_png"]

logger = logging.getLogger(__name__)


def load_run(path: str | Path, *, device: str | None = None, build_root=None) -> LoadedRun:
    """Load a finished run directory: protocol, final state, votes, linear readout, scores."""
    path = Path(path)
    if not (path / "run.json").exists():
        raise RunError(f"{path}: not a run directory (no run.json)")
    info = read_run_file(path / "run.json")  # the readers of every command: a damaged file is one RunError
    protocol = load_protocol(path / "protocol.yaml")
    if not (path / "state.npz").exists():
        raise RunError(f"{path}: no state.npz (the run has not finished: lcsnn resume {path.name})")
    state = read_state(path / "state.npz", protocol.geometry)
    votes, linear = _load_readouts(path)
    scores = read_run_file(path / "scores.json") if (path / "scores.json").exists() else {}
    return LoadedRun(path, protocol, info, state, votes, linear, scores, device, build_root)


@dataclass
class LoadedRun:
    path: Path
    protocol: Protocol
    info: dict
    state: NetworkState
    votes: np.ndarray | None
    linear: readout.LinearReadout | None
    scores: dict
    device: str | None = None
    build_root: Path | None = None
    _sim: Simulator | None = field(default=None, repr=False)
    _dataset: object = field(default=None, repr=False)

    def _simulator(self):
        if self._sim is None:
            self._dataset, self._sim, _ = _prepare(self.protocol, self.device, self.build_root)
        return self._sim

    def _phase(self, name: str) -> tuple[int, dict]:
        for k, phase in enumerate(self.protocol["phases"]):
            if phase["name"] == name:
                return k, phase
        raise RunError(f"{self.path}: no phase named {name!r}")

    def state_before(self, name: str) -> NetworkState:
        """The state the run had when phase ``name`` started."""
        k, _ = self._phase(name)
        # an unlock changes no weight, and the run writes no state after one: the state before it is the same
        before = [p for p in self.protocol["phases"][:k] if p["type"] != "unlock"]
        if not before:
            raise RunError(f"{name!r} is the first phase: its start state is the random initial state")
        return read_state(self.path / "states" / f"{before[-1]['name']}.npz", self.protocol.geometry)

    def rerun(self, name: str = "test") -> dict:
        """Re-simulate an evaluation phase exactly as the run did it (same samples, same seeds) and score it."""
        k, phase = self._phase(name)
        if phase["type"] != "test":
            raise RunError(f"phase {name!r} is a {phase['type']} phase; rerun takes a test phase")
        sim = self._simulator()
        seqs = np.random.SeedSequence(self.protocol["seed"]).spawn(1 + len(self.protocol["phases"]))
        images, labels = _phase_images(self._dataset, phase)
        _, out = _run_phase(sim, phase, images, labels, self.state_before(name), self.protocol, seqs[1 + k],
                            progress=False)  # fmt: skip
        g = self.protocol.geometry
        counts = out.counts.reshape(len(out.counts), g.n_filters, g.n_locations)
        return readout.evaluate(
            counts, out.labels, self.votes, self.linear, top_n=tuple(self.protocol["readout"]["top_n"])
        )

    def counts(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """Y spike counts (n, n_filters, n_locations) of the trained, frozen network for uint8 images (n, 28, 28)."""
        sim = self._simulator()
        phase = {"type": "test", "name": "predict", "n": len(images), "sampling": "ordered"}
        _, out = _run_phase(sim, phase, np.asarray(images, dtype=np.uint8), np.zeros(len(images), dtype=np.uint8),
                            self.state, self.protocol, np.random.SeedSequence(seed), progress=False,
                            keep_state=False)  # fmt: skip
        g = self.protocol.geometry
        return out.counts.reshape(len(images), g.n_filters, g.n_locations)

    def predict(self, images: np.ndarray, method: str = "patch_voting", seed: int = 0) -> np.ndarray:
        """Predicted labels (-1: no Y spike) by a voting method or ``"linear"``."""
        counts = self.counts(images, seed)
        if method == "linear":
            if self.linear is None:
                raise RunError(f"{self.path}: this run has no linear readout")
            return self.linear.predict(counts)
        return readout.predict(readout.voting_scores(counts, self.votes, method), counts)

    def feed_label(self, label: int, seed: int | None = None) -> dict:
        """Present a random calibration-set image of ``label``.

        Returns the image, the prediction (patch voting), the scores, the Y spike counts, every Y spike
        (``spike_neurons``, ``spike_times_ms``), and for the best voter of each location (the filter contributing
        most to the predicted class) its index, its XY weights, its voltage at every step (mV) and its threshold
        (v_thresh + theta, mV). One presentation runs on the runtime device, so it needs no compile.
        """
        images, labels = load_dataset(self.protocol["dataset"]["name"], self.protocol["dataset"]["path"]).split(
            "calibration"
        )
        rng = np.random.default_rng(seed)
        index = int(rng.choice(np.flatnonzero(labels == label)))
        return self._feed(images[index : index + 1], {"label": int(label), "image_index": index}, seed or 0)

    def feed_image(self, path: str | Path, invert: bool | None = None) -> dict:
        """Present a PNG (any size; greyscale). ``invert=None`` inverts when the background is light: MNIST
        digits are light on dark, the thesis's custom images were dark on light."""
        image = read_png(path)
        if invert is None:
            invert = float(np.median(image)) > 127
        if invert:
            image = 255 - image
        return self._feed(image[None], {"path": str(path), "inverted": bool(invert)})

    def _feed(self, image: np.ndarray, extra: dict, seed: int = 0) -> dict:
        """One presentation on the runtime device (numpy code generation: no compilation), with voltages."""
        g = self.protocol.geometry
        shown = present_recorded(self.protocol, self.state, self.votes, None, image, seed)
        best = shown["best_voters"][0]
        with np.load(self.path / "state.npz") as data:  # per-synapse weights (C: the kernels at every location)
            xy_w, post = data["xy_w"], data["xy_j"]
        # pre-major order: a neuron's synapses run row by row through its receptive field
        weights = np.stack([xy_w[post == neuron].reshape(g.kernel_size, g.kernel_size) for neuron in best])
        spikes = shown["spike_sample"] == 0
        return {**extra, "image": image[0], "prediction": int(shown["predictions"]["patch_voting"][0]),
                "scores": shown["scores"][0], "counts": shown["counts"][0], "best_voters": best,
                "best_voter_weights": weights, "best_voter_voltages_mV": shown["best_voltages_mV"][0],
                "best_voter_thresholds_mV": shown["threshold_mV"][0], "spike_neurons": shown["spike_neuron"][spikes],
                "spike_times_ms": shown["spike_time_ms"][spikes]}  # fmt: skip


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as a 28 x 28 uint8 greyscale image (resized by matplotlib's reader and block averaging)."""
    import matplotlib.image

    data = matplotlib.image.imread(str(path))
    if data.ndim == 3:
        data = data[..., :3].mean(axis=2)
    data = np.asarray(data, dtype=float)
    if data.max() <= 1.0:
        data = data * 255
    rows = np.linspace(0, data.shape[0], 29).astype(int)
    cols = np.linspace(0, data.shape[1], 29).astype(int)
    out = np.array([[data[rows[r] : max(rows[r + 1], rows[r] + 1), cols[c] : max(cols[c + 1], cols[c] + 1)].mean()
                     for c in range(28)] for r in range(28)])  # fmt: skip
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
