"""Figures of a finished run, drawn from its stored files only (never simulates): ``lcsnn plot RUN_DIR``.

Each figure of `FIGURES` reads what the run directory holds (state, votes, spike counts, scores) and is
written to ``<run>/figures/<name>.<fmt>``; a figure whose data is absent (no test counts, a competition
that did not learn, a train phase without ``evaluate_every``, no ``showcase.npz``, ...) is skipped with a
logged note. Learning curves come from ``curves/<phase>.json``; voltage traces (the thesis's
``plot_neuron_voltage``), input images with their predictions (``plot_image``) and spike rasters with spike
times from ``showcase.npz`` (a few test samples presented once more at the end of the run). The thesis's
competition overlaid on XY is not drawn.
"""

from __future__ import annotations

import io
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import readout
from .models import read_yaml
from .results import RunError, read_npz, read_run_file, write_bytes
from .topology import Geometry, competing, local_pairs

__all__ = ["FIGURES", "FORMATS", "MissingData", "StoredRun", "load_stored_run", "plot_run", "register",
           "tile_lc_weights", "top_n_accuracies", "learning_curves"]  # fmt: skip

logger = logging.getLogger(__name__)

FORMATS = ("png", "svg", "pdf")
CMAP = "YlOrBr"
BAR = "#cc4c02"  # the dark orange of YlOrBr, for bars and lines
ACCENT = "#662506"


class MissingData(LookupError):
    """The run directory lacks what a figure needs; the figure is skipped."""


@dataclass
class StoredRun:
    """A finished (or partial) run directory, read lazily."""

    path: Path
    info: dict
    protocol: dict
    scores: dict
    geometry: Geometry
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _npz(self, rel: str) -> dict:
        if rel not in self._cache:
            file = self.path / rel
            if not file.is_file():
                raise MissingData(f"no {rel}")
            self._cache[rel] = read_npz(file)
        return self._cache[rel]

    @property
    def test_phase(self) -> str:
        """The headline test phase (`readout.headline_test_phase`): of scores.json, else of the protocol."""
        tests = [p for p in self.protocol.get("phases", []) if "name" in p]
        return readout.headline_test_phase(self.scores) or readout.headline_test_phase(tests) or "test"

    def state(self, phase: str | None = None) -> dict:
        """``state.npz`` (or ``states/<phase>.npz``): xy_w, xy_i, xy_j, yy_w, yy_i, yy_j, theta (volt)."""
        return self._npz("state.npz" if phase is None else f"states/{phase}.npz")

    def votes(self) -> np.ndarray:
        """Votes, shape (10, F, L)."""
        votes = self._npz("readout/votes.npz")["votes"]
        g = self.geometry
        if votes.shape[1:] != (g.n_filters, g.n_locations):
            raise RunError(f"{self.path}: votes of shape {votes.shape}, expected (10, {g.n_filters}, {g.n_locations})")
        return votes

    def counts(self, phase: str | None = None) -> dict:
        """Spike counts of an evaluation phase (default: the test phase) as (n, F, L), labels, image_indices."""
        data = dict(self._npz(f"counts/{phase or self.test_phase}.npz"))
        g = self.geometry
        if data["counts"].ndim != 2 or data["counts"].shape[1] != g.n_neurons:
            raise RunError(f"{self.path}: counts have shape {data['counts'].shape}, expected (n, {g.n_neurons})")
        data["counts"] = data["counts"].reshape(len(data["counts"]), g.n_filters, g.n_locations)
        return data

    def showcase(self) -> dict:
        """``showcase.npz``: a few test samples presented once more with voltages and spike times."""
        data = self._npz("showcase.npz")
        if not len(data["images"]):
            raise MissingData("showcase.npz holds no sample")
        return data


def load_stored_run(path) -> StoredRun:
    """Read a run directory's run.json, protocol.yaml and scores.json (the arrays are loaded on demand)."""
    path = Path(path)
    if not (path / "run.json").is_file() or not (path / "protocol.yaml").is_file():
        raise RunError(f"{path}: not a run directory (no run.json and protocol.yaml)")
    info = read_run_file(path / "run.json")
    protocol = read_yaml(path / "protocol.yaml", RunError)
    try:
        net, crop = protocol["network"], protocol["dataset"]["crop"]
        geometry = Geometry(crop=crop, kernel_size=net["kernel_size"], stride=net["stride"],
                            n_filters=net["n_filters"], architecture=net.get("architecture", "LC"),
                            yy_pairs=net.get("yy_pairs", "competition"))  # fmt: skip
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{path / 'protocol.yaml'}: cannot be read (no usable network or dataset: {err!r})") from None
    scores = read_run_file(path / "scores.json") if (path / "scores.json").is_file() else {}
    return StoredRun(path, info, protocol, scores, geometry)


# ----------------------------------------------------------------------------------------------- helpers


def tile_lc_weights(xy_w, geometry: Geometry, pre=None, post=None) -> np.ndarray:
    """XY weights as one image, as the thesis draws LC (bindsnet ``reshape_locally_connected_weights``).

    Location ``(row, col)`` is a block of ``ceil(sqrt F) x ceil(sqrt F)`` kernels (filter f at grid position
    ``(f // grid, f % grid)``), each kernel ``k x k`` in input orientation; blocks are tiled ``side x side``.
    Grid slots without a filter are NaN. ``pre``/``post`` default to `local_pairs` (the stored synapse order).
    """
    g = geometry
    if pre is None or post is None:
        pre, post = local_pairs(g)
    xy_w, pre, post = np.asarray(xy_w, dtype=float), np.asarray(pre), np.asarray(post)
    if not len(xy_w) == len(pre) == len(post) == g.n_xy:
        raise ValueError(f"expected {g.n_xy} XY weights with indices, got {len(xy_w)}, {len(pre)}, {len(post)}")
    k, grid = g.kernel_size, math.isqrt(g.n_filters - 1) + 1
    f, loc = post // g.n_locations, post % g.n_locations
    loc_row, loc_col = loc // g.side, loc % g.side
    r, c = pre // g.crop - loc_row * g.stride, pre % g.crop - loc_col * g.stride
    if np.any((r < 0) | (r >= k) | (c < 0) | (c >= k)):
        raise ValueError("an XY synapse lies outside its neuron's receptive field")
    block = grid * k
    image = np.full((g.side * block, g.side * block), np.nan)
    image[loc_row * block + (f // grid) * k + r, loc_col * block + (f % grid) * k + c] = xy_w
    return image


def _readout(run: StoredRun):
    """Test counts, labels, votes, the best voting method and its predictions (cached)."""
    if "readout" not in run._cache:
        data, votes = run.counts(), run.votes()
        counts, labels = data["counts"], data["labels"].astype(np.int64)
        scores = run.scores.get(run.test_phase) or readout.evaluate(counts, labels, votes)
        method, _ = readout.best_voting(scores)
        pred = readout.predict(readout.voting_scores(counts, votes, method), counts)
        run._cache["readout"] = counts, labels, votes, method, pred
    return run._cache["readout"]


def top_n_accuracies(run: StoredRun) -> dict[int, dict]:
    """Top-n voting (`readout.top_n_votes`, then patch voting) on the test counts, n = 1..10."""
    counts, labels, votes, _, _ = _readout(run)
    ns = range(1, len(votes) + 1)
    scores = readout.evaluate(counts, labels, votes, top_n=ns)
    return {n: scores[f"top_{n}"] for n in ns}


def learning_curves(run: StoredRun) -> list[tuple[str, int, dict]]:
    """``(phase, offset, curve)`` of every train phase with a stored curve; ``offset`` is the number of training
    samples of the train phases before it, so that the x axis counts every training sample of the run."""
    out, offset = [], 0
    for phase in run.protocol.get("phases", []):
        if phase.get("type") != "train":
            continue
        path = run.path / "curves" / f"{phase['name']}.json"
        if path.is_file():
            out.append((phase["name"], offset, read_run_file(path)))
        offset += int(phase.get("n", 0))
    return out


def _predicted(label: int) -> str:
    return "none" if label < 0 else str(label)


def _competition_weights(run: StoredRun) -> np.ndarray:
    try:
        return run._npz("competition/final.npz")["weights"]
    except MissingData:
        s = run.state()
        return s["yy_w"][competing(run.geometry, s["yy_i"], s["yy_j"])]


def _learned_competition(run: StoredRun) -> np.ndarray:
    w = _competition_weights(run)
    if w.size == 0:
        raise MissingData("no competing YY pairs (one filter)")
    if np.ptp(w) == 0:
        raise MissingData(f"the competition did not learn (every YY weight is {w[0]:g})")
    return w


@contextmanager
def _style():
    """One look for every figure: seaborn's ticks style, YlOrBr images, constrained layout."""
    import matplotlib as mpl
    import seaborn as sns

    rc = {**sns.axes_style("ticks"), **sns.plotting_context("notebook", font_scale=0.85), "image.cmap": CMAP,
          "axes.titlesize": 10, "figure.constrained_layout.use": True, "savefig.dpi": 150}  # fmt: skip
    with mpl.rc_context(rc):
        yield


def _colourbar(fig, image, ax, label):
    fig.colorbar(image, ax=ax, shrink=0.85).set_label(label)


def _method_title(method: str) -> str:
    return method.replace("_", " ")


# ----------------------------------------------------------------------------------------------- figures


def weights_xy(run: StoredRun, fig) -> None:
    g, s = run.geometry, run.state()
    image = tile_lc_weights(s["xy_w"], g, s["xy_i"], s["xy_j"])
    k, block = g.kernel_size, (math.isqrt(g.n_filters - 1) + 1) * g.kernel_size
    shared = g.architecture == "C"  # one kernel per channel, the same at every location: draw one location
    image = image[:block, :block] if shared else image
    size = float(np.clip(len(image) / 45, 5, 11))
    fig.set_size_inches(size + 1.5, size)
    ax = fig.add_subplot()
    im = ax.imshow(image, cmap=CMAP, vmin=0, interpolation="nearest")
    for edge in range(k, len(image), k):  # thin lines between kernels, darker ones between locations
        major = edge % block == 0
        style = {"color": "0.25" if major else "white", "lw": 1.0 if major else 0.3}
        ax.axhline(edge - 0.5, **style), ax.axvline(edge - 0.5, **style)
    where = "kernels shared by every location" if shared else f"{g.side} x {g.side} locations (stride {g.stride} px)"
    ax.set(xticks=[], yticks=[], xlabel=where,
           ylabel=f"per location {g.n_filters} kernels of {k} x {k} input pixels")  # fmt: skip
    ax.set_title(f"XY weights after training: {g.architecture} {g.n_filters} filters, kernel {k}, crop {g.crop}")
    _colourbar(fig, im, ax, "XY weight (dimensionless; a spike adds w·w_psp)")


def weights_yy(run: StoredRun, fig) -> None:
    _learned_competition(run)
    g, s = run.geometry, run.state()
    n_loc = min(g.n_locations, max(1, 1000 // g.n_filters))  # at most ~1000 neurons drawn
    shown = n_loc * g.n_filters

    def order(j):  # location-major: the competing pairs form F x F blocks on the diagonal
        return (j % g.n_locations) * g.n_filters + j // g.n_locations

    i, j = order(s["yy_i"]), order(s["yy_j"])
    keep = (i < shown) & (j < shown)
    matrix = np.full((shown, shown), np.nan)
    matrix[i[keep], j[keep]] = s["yy_w"][keep]
    fig.set_size_inches(7.5, 6)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap=CMAP + "_r", interpolation="nearest")
    part = "" if n_loc == g.n_locations else f" (first {n_loc} of {g.n_locations} locations)"
    ax.set_title(f"Learned YY competition weights{part}; blank: no synapse")
    ax.set(xlabel="postsynaptic Y neuron (location-major: loc·F + f)", ylabel="presynaptic Y neuron (loc·F + f)")
    _colourbar(fig, im, ax, "YY weight (a spike adds w·w_psp; negative: inhibition)")


def competition_histogram(run: StoredRun, fig) -> None:
    w = _learned_competition(run)
    fig.set_size_inches(7, 4.5)
    ax = fig.add_subplot()
    ax.hist(w, bins=50, color=BAR, edgecolor="white", lw=0.3)
    c_w = run.protocol.get("network", {}).get("c_w")
    if c_w is not None:
        ax.axvline(float(c_w), color=ACCENT, ls="--", lw=1, label=f"c_w = {c_w}")
        ax.legend(frameon=False)
    ax.set(xlabel="YY weight between competing neurons (dimensionless)", ylabel="number of synapses")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Distribution of the {w.size} learned competition weights (different filters, same location)")


def votes(run: StoredRun, fig) -> None:
    v = run.votes()
    g = run.geometry
    fig.set_size_inches(11, 4)
    ax = fig.add_subplot()
    im = ax.imshow(v.reshape(len(v), -1), aspect="auto", cmap=CMAP, interpolation="nearest")
    ax.set(yticks=range(len(v)), xlabel=f"Y neuron j = f·{g.n_locations} + location", ylabel="label")
    ax.set_title(f"Votes: mean spike count of each of the {g.n_neurons} Y neurons per calibration label")
    _colourbar(fig, im, ax, "mean spikes per sample")


def votes_distribution(run: StoredRun, fig) -> None:
    v = run.votes()
    per_neuron = v.reshape(len(v), -1).T
    per_neuron = -np.sort(-per_neuron[per_neuron.any(axis=1)], axis=1)  # each neuron's votes, best class first
    if not len(per_neuron):
        raise MissingData("no neuron spiked during calibration")
    mean, low, high = per_neuron.mean(axis=0), per_neuron.min(axis=0), per_neuron.max(axis=0)
    ranks = np.arange(1, len(mean) + 1)
    fig.set_size_inches(7, 4.5)
    ax = fig.add_subplot()
    ax.bar(ranks, mean, color=BAR, yerr=[mean - low, high - mean], capsize=3, ecolor=ACCENT)
    ax.set(xticks=ranks, xlabel="class rank for the neuron (1: its best class)", ylabel="vote (mean spikes per sample)")
    ax.set_title(f"Votes sorted per neuron: mean over {len(per_neuron)} neurons that spiked, bars min to max")


def accuracy_per_label(run: StoredRun, fig) -> None:
    _, labels, votes_, method, pred = _readout(run)
    classes = np.arange(len(votes_))
    n = np.array([(labels == c).sum() for c in classes])
    acc = np.array([np.mean(pred[labels == c] == c) if k else np.nan for c, k in zip(classes, n, strict=True)])
    err = np.sqrt(acc * (1 - acc) / np.maximum(n, 1))
    fig.set_size_inches(7, 4.5)
    ax = fig.add_subplot()
    ax.bar(classes, acc, yerr=err, color=BAR, capsize=3, ecolor=ACCENT)
    ax.axhline(np.mean(pred == labels), color=ACCENT, ls="--", lw=1, label="all labels")
    ax.set(xticks=classes, ylim=(0, 1.05), xlabel="true label", ylabel="test accuracy (± binomial s.e.)")
    ax.legend(frameon=False, loc="lower right")
    ax.set_title(f"Test accuracy per label, {_method_title(method)} (best voting rule), n = {len(labels)}")


def confusion(run: StoredRun, fig) -> None:
    import seaborn as sns

    _, labels, votes_, method, pred = _readout(run)
    n_classes = len(votes_)
    none = bool((pred < 0).any())
    cols = np.where(pred < 0, n_classes, pred)
    matrix = np.zeros((n_classes, n_classes + none))
    np.add.at(matrix, (labels, cols), 1)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig.set_size_inches(8.5 if none else 8, 6.5)
    ax = fig.add_subplot()
    sns.heatmap(matrix, ax=ax, cmap=CMAP, vmin=0, vmax=1, annot=True, fmt=".2f", annot_kws={"size": 7},
                xticklabels=[*map(str, range(n_classes)), *(["none"] if none else [])],
                cbar_kws={"label": "fraction of the true label's test samples"})  # fmt: skip
    ax.set(xlabel="predicted label (none: no Y spike or no vote)", ylabel="true label")
    ax.set_title(f"Confusion matrix, {_method_title(method)} (best voting rule), rows normalised")


def accuracy_top_n(run: StoredRun, fig) -> None:
    acc = top_n_accuracies(run)
    ns = np.array(list(acc))
    fig.set_size_inches(7, 4.5)
    ax = fig.add_subplot()
    ax.errorbar(ns, [acc[n]["accuracy"] for n in ns], yerr=[acc[n]["error"] for n in ns], color=BAR, marker="o",
                capsize=3, ecolor=ACCENT)  # fmt: skip
    ax.set(xticks=ns, xlabel="n: classes each neuron votes for (its n best; n = 10 is patch voting)",
           ylabel="test accuracy (± binomial s.e.)")  # fmt: skip
    ax.set_title(f"Top-n patch voting on the stored test counts (n = {acc[ns[0]]['n']} samples)")


def scores(run: StoredRun, fig) -> None:
    if not run.scores:
        raise MissingData("no scores.json")
    phases = list(run.scores)
    methods = list(dict.fromkeys(m for p in phases for m in run.scores[p]))
    fig.set_size_inches(7.5, 1.2 + 0.45 * len(methods) * len(phases))
    ax = fig.add_subplot()
    height = 0.8 / len(phases)
    for k, phase in enumerate(phases):
        ys = [i + k * height for i, m in enumerate(methods) if m in run.scores[phase]]
        entries = [run.scores[phase][m] for m in methods if m in run.scores[phase]]
        acc = [e["accuracy"] for e in entries]
        bars = ax.barh(ys, acc, height=height * 0.9, xerr=[e["error"] for e in entries], capsize=3, ecolor="0.2",
                       color=(BAR, ACCENT, "#fe9929", "#993404")[k % 4],
                       label=f"{phase} (n = {entries[0]['n']})")  # fmt: skip
        ax.bar_label(bars, labels=[f"{a:.3f}" for a in acc], padding=14, fontsize=8)
    ax.set(yticks=np.arange(len(methods)) + 0.4 - height / 2, yticklabels=methods, xlim=(0, 1.1),
           xlabel="test accuracy (± binomial s.e.)")  # fmt: skip
    ax.invert_yaxis()
    if len(phases) > 1:
        ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    n = "" if len(phases) > 1 else f" (n = {next(iter(run.scores[phases[0]].values()))['n']})"
    ax.set_title(f"Test accuracy of every readout{n}: {run.info.get('name', run.path.name)}")


def spikes_best(run: StoredRun, fig) -> None:
    counts, labels, votes_, method, pred = _readout(run)
    shown = min(100, len(counts))
    c = counts[:shown].astype(float)
    weight = np.where(pred[:shown, None, None] >= 0, votes_[np.maximum(pred[:shown], 0)], 1.0)  # (n, F, L)
    best = np.argmax(c * weight, axis=1)  # the patch-voting winner of each location (most spikes if no vote)
    image = np.take_along_axis(c, best[:, None, :], axis=1)[:, 0, :].T  # (L, n)
    fig.set_size_inches(11, 2.2 + 0.25 * len(image))
    ax = fig.add_subplot()
    im = ax.imshow(image, aspect="auto", cmap=CMAP, interpolation="nearest", vmin=0)
    wrong = np.flatnonzero(pred[:shown] != labels[:shown])
    ax.plot(wrong, np.full(len(wrong), -0.9), "v", color="crimson", ms=4, clip_on=False, label="misclassified")
    ax.set_ylim(len(image) - 0.5, -1.3)
    ax.set(xlabel="test sample", ylabel="location (row·side + col)")
    ax.legend(frameon=False, loc="lower right", bbox_to_anchor=(1, 1))
    ax.set_title(f"Spikes of the best-voting neuron per location ({_method_title(method)}), first {shown} test "
                 "samples\n(counts per sample; spike times: spikes_raster)", loc="left")  # fmt: skip
    time = run.protocol.get("simulation", {}).get("time_per_sample", "one sample")
    _colourbar(fig, im, ax, f"spikes in {time}")


def theta(run: StoredRun, fig) -> None:
    th = run.state()["theta"] * 1e3  # stored in volt
    if not np.any(th):
        raise MissingData("every adaptive threshold is 0 (no training)")
    fig.set_size_inches(7, 4.5)
    ax = fig.add_subplot()
    ax.hist(th, bins=40, color=BAR, edgecolor="white", lw=0.3)
    ax.set(xlabel="adaptive threshold θ (mV)", ylabel="number of Y neurons")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"Adaptive thresholds of the {th.size} Y neurons after training (mean {th.mean():.1f} mV)")


def learning_curve(run: StoredRun, fig) -> None:
    curves = learning_curves(run)
    if not any(c["points"] for _, _, c in curves):
        raise MissingData("no learning curve (curves/<phase>.json: a train phase with evaluate_every)")
    order = [*readout.VOTING_METHODS, "linear"]
    methods = list(dict.fromkeys(m for _, _, c in curves for p in c["points"] for m in p["scores"]))
    methods.sort(key=lambda m: order.index(m) if m in order else len(order))
    styles = {m: (c, "-", "o") for m, c in zip(order, ("#fe9929", "#ec7014", "#cc4c02", ACCENT), strict=True)}
    others = [m for m in methods if m not in order]  # top_<n>: a grey, a dash and a marker of its own each
    greys, dashes, marks = ("0.2", "0.45", "0.65"), (":", "--", "-."), ("s", "^", "D", "v")
    for j, method in enumerate(others):
        styles[method] = (greys[j % 3], dashes[j // 3 % 3], marks[j % 4])
    fig.set_size_inches(8, 4.8)
    ax = fig.add_subplot()
    for k, (phase, offset, curve) in enumerate(curves):
        points = curve["points"]
        x = np.array([offset + p["samples"] for p in points])
        for method in methods:
            entries = [p["scores"].get(method) for p in points]
            if any(e is None for e in entries):
                continue
            acc, err = np.array([e["accuracy"] for e in entries]), np.array([e["error"] for e in entries])
            colour, dash, mark = styles[method]
            ax.plot(x, acc, marker=mark, ms=3.5, color=colour, ls=dash,
                    label=_method_title(method) if k == 0 else None)  # fmt: skip
            ax.fill_between(x, acc - err, acc + err, color=colour, alpha=0.18, lw=0)
        if offset:
            ax.axvline(offset, color="0.5", ls="--", lw=0.8)
            ax.text(offset, 0.02, f" {phase}", color="0.35", fontsize=8, transform=ax.get_xaxis_transform())
    first = curves[0][2]
    ax.set(ylim=(0, 1.02), xlabel="training samples",
           ylabel=f"accuracy on {first['test']} test images (± binomial s.e.)")  # fmt: skip
    ax.legend(frameon=False, loc="lower right", ncol=2)
    ax.set_title(f"Learning curve: every {first['evaluate_every']} samples, readouts calibrated on "
                 f"{first['calibrate']} images, learning off while evaluating")  # fmt: skip


def _sample_title(show: dict, k: int) -> str:
    methods = [str(m) for m in show["methods"]]
    pred = int(show["predictions"][k, methods.index("patch_voting")]) if "patch_voting" in methods else -1
    index, label = int(show["image_indices"][k]), int(show["labels"][k])
    return f"test image {index}: label {label}, patch voting {_predicted(pred)}"


def voltages_best(run: StoredRun, fig) -> None:
    show, g, k = run.showcase(), run.geometry, 0
    v, threshold = show["best_voltages_mV"][k], show["threshold_mV"][k]
    best, dt = show["best_voters"][k], float(show["dt_ms"])
    shown = min(len(v), 25)
    cols = math.isqrt(shown - 1) + 1
    rows = (shown + cols - 1) // cols
    fig.set_size_inches(3.2 * cols + 0.6, 2.2 * rows + 1.0)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
    t = np.arange(v.shape[1]) * dt
    in_sample = show["spike_sample"] == k
    for loc, ax in enumerate(axes):
        if loc >= shown:
            ax.set_visible(False)
            continue
        ax.plot(t, v[loc], color=BAR, lw=0.8)
        ax.axhline(threshold[loc], color=ACCENT, ls="--", lw=0.8)
        times = show["spike_time_ms"][in_sample & (show["spike_neuron"] == best[loc])]
        ax.plot(times, np.full(len(times), threshold[loc]), "|", color="crimson", ms=9, mew=1.2)
        f = int(best[loc]) // g.n_locations
        what = f"{len(times)} spikes" if len(times) else "no spike (closest to threshold)"
        ax.set_title(f"location {loc}: filter {f}, {what}", fontsize=8)
    fig.supxlabel("time in the sample (ms)", fontsize=9)
    fig.supylabel("membrane voltage v (mV)", fontsize=9)
    fig.suptitle(f"Voltage of each location's best voter, {_sample_title(show, k)}\n"
                 "dashed: threshold v_thresh + θ; red ticks: spikes", fontsize=10)  # fmt: skip


def input_prediction(run: StoredRun, fig) -> None:
    import matplotlib.patches

    show = run.showcase()
    n, crop = min(len(show["images"]), 8), int(show["crop"])
    methods = [str(m) for m in show["methods"]]
    fig.set_size_inches(max(2.6 * n + 0.4, 6.5), 4.0 + 0.25 * len(methods))
    axes = fig.subplots(1, n, squeeze=False)[0]
    for k, ax in enumerate(axes):
        image, label = show["images"][k], int(show["labels"][k])
        ax.imshow(image, cmap=CMAP, vmin=0, vmax=255, interpolation="nearest")
        top, left = int(round((image.shape[0] - crop) / 2.0)), int(round((image.shape[1] - crop) / 2.0))
        ax.add_patch(matplotlib.patches.Rectangle((left - 0.5, top - 0.5), crop, crop, fill=False, ec=ACCENT,
                                                  ls="--", lw=1))  # fmt: skip
        preds = [int(p) for p in show["predictions"][k]]
        marks = ["✓" if p == label else "✗" for p in preds]
        lines = [f"{_method_title(m)}: {_predicted(p)} {c}" for m, p, c in zip(methods, preds, marks, strict=True)]
        ax.set(xticks=[], yticks=[], xlabel="\n".join(lines))
        ax.set_title(f"test image {int(show['image_indices'][k])}\nlabel {label}", fontsize=9)
    fig.suptitle(f"Input images and each readout's prediction\n(dashed: the {crop} x {crop} crop the network sees)",
                 fontsize=10)  # fmt: skip


def spikes_raster(run: StoredRun, fig) -> None:
    show, g = run.showcase(), run.geometry
    n = min(len(show["images"]), 3)
    duration = show["best_voltages_mV"].shape[-1] * float(show["dt_ms"])
    fig.set_size_inches(9, 2.2 + 2.6 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for k, ax in enumerate(axes):
        here = show["spike_sample"] == k
        neuron, times = show["spike_neuron"][here], show["spike_time_ms"][here]
        spiking = np.unique(neuron)
        order = spiking[np.lexsort((spiking // g.n_locations, spiking % g.n_locations))]  # location-major
        row = {int(j): r for r, j in enumerate(order)}
        rows = np.array([row[int(j)] for j in neuron], dtype=int)
        best = np.isin(neuron, show["best_voters"][k])
        ax.plot(times[~best], rows[~best], "|", color="#fe9929", ms=5, label="other Y neurons")
        ax.plot(times[best], rows[best], "|", color=ACCENT, ms=7, mew=1.5, label="best voter of its location")
        for edge in np.flatnonzero(np.diff(order % g.n_locations)) + 0.5:  # between locations
            ax.axhline(edge, color="0.85", lw=0.6)
        ax.set(xlim=(0, duration), ylim=(len(order) - 0.5, -0.5))
        if len(order) <= 30:
            ax.set_yticks(range(len(order)), [f"{j % g.n_locations}/{j // g.n_locations}" for j in order], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_ylabel(f"{len(order)} spiking Y neurons\n(location/filter)", fontsize=8)
        ax.set_title(_sample_title(show, k), fontsize=9, loc="left")
        if k == 0:
            ax.legend(frameon=False, loc="lower right", bbox_to_anchor=(1, 1), ncol=2, fontsize=8)
    axes[-1].set_xlabel("time in the sample (ms)")
    fig.suptitle("Spike times of the Y neurons that spiked, test samples presented with the final state", fontsize=10)


#: Every figure, name -> function(run, fig) drawing into a matplotlib Figure (raises MissingData to be skipped).
FIGURES = {f.__name__: f for f in (weights_xy, weights_yy, competition_histogram, votes, votes_distribution,
                                   accuracy_per_label, confusion, accuracy_top_n, scores, spikes_best,
                                   theta, learning_curve, voltages_best, input_prediction,
                                   spikes_raster)}  # fmt: skip


# ----------------------------------------------------------------------------------------------- output


def plot_run(path, names: list[str] | None = None, fmt: str = "png") -> list[Path]:
    """Write the named figures (default: all) to ``<run>/figures/<name>.<fmt>``; returns the written paths.

    Figures whose data the run lacks are skipped with a note (a warning when asked for by name).
    """
    from matplotlib.figure import Figure

    unknown = [n for n in names or () if n not in FIGURES]
    if unknown:
        raise RunError(f"unknown figure {', '.join(map(repr, unknown))}; known: {', '.join(FIGURES)}")
    if fmt not in FORMATS:
        raise RunError(f"unknown figure format {fmt!r}; known: {', '.join(FORMATS)}")
    run = load_stored_run(path)
    out_dir = run.path / "figures"
    drawn = []  # written once every figure is drawn: a damaged file half-way leaves no half-written folder
    for name in names or FIGURES:
        with _style():
            fig = Figure()
            try:
                FIGURES[name](run, fig)
            except MissingData as why:
                logger.log(logging.WARNING if names else logging.INFO, "figure %s skipped: %s", name, why)
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt)
        drawn.append((out_dir / f"{name}.{fmt}", buf.getvalue()))
    for target, data in drawn:
        write_bytes(target, data)
    return [target for target, _ in drawn]


def _plot_command(args) -> int:
    across = args.runs is not None or args.x or args.y or args.compare_architectures
    if across:  # figures across runs: brian_lcsnn.compare
        if args.run_dir is not None or args.figures:
            raise RunError("lcsnn plot: RUN_DIR/--figure (one run) or --runs/--x/--y/--compare-architectures "
                           "(across runs), not both")  # fmt: skip
        from . import compare

        return compare.plot_command(args)
    if args.run_dir is None:
        raise RunError("lcsnn plot: give RUN_DIR, or --x COL --y COL / --compare-architectures (with --runs FILTER)")
    from .store import resolve_run

    for written in plot_run(resolve_run(args.run_dir, args.results), args.figures, args.format):
        print(written)
    return 0


def register(subparsers) -> None:
    """Add ``lcsnn plot RUN_DIR [--figure NAME ...] [--format png|svg|pdf]`` and, across the runs of a results
    folder, ``lcsnn plot [--runs KEY=VALUE ...] (--x COL --y COL [--score COL] | --compare-architectures)``."""
    plot = subparsers.add_parser("plot", help="draw a run's figures, or figures across runs (no simulation)")
    plot.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                      help="the run directory, or a run id (or unique prefix) in the results folder")  # fmt: skip
    plot.add_argument("--figure", dest="figures", action="append", metavar="NAME",
                      help=f"a figure to draw (repeatable; default: all): {', '.join(FIGURES)}")  # fmt: skip
    plot.add_argument("--format", choices=FORMATS, default="png", help="file format (default: png)")
    across = plot.add_argument_group("across runs (the index of a results folder; finished runs only)")
    across.add_argument("--runs", action="append", metavar="KEY=VALUE",
                        help="keep runs whose column or dotted protocol key equals VALUE (as lcsnn runs --filter); "
                             "repeatable, all must hold; default: every finished run")  # fmt: skip
    across.add_argument("--x", metavar="COL", help="grid search: x axis, a column or a dotted protocol path")
    across.add_argument("--y", metavar="COL", help="grid search: y axis (e.g. c_w, parameters.yy.A_pos)")
    across.add_argument("--score", default="best_voting", metavar="COL",
                        help="grid search: the score, a numeric column (default best_voting; linear, ...)")  # fmt: skip
    across.add_argument("--compare-architectures", action="store_true",
                        help="accuracy vs total parameters per architecture: figure, CSV, markdown")  # fmt: skip
    across.add_argument("--results", type=Path, help="results folder (default: $BRIAN_LCSNN_RESULTS or ./results)")
    across.add_argument("--out", type=Path, help="output folder (default: <results>/figures)")
    plot.set_defaults(handler=_plot_command)
