"""Tests of brian_lcsnn.figures: every figure from a tiny fake run directory, the LC weight tiling, the CLI, and
every figure of a real tiny run (the session's `tiny_run`: learning curve and showcase included)."""

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from brian_lcsnn import figures
from brian_lcsnn.figures import (
    FIGURES,
    learning_curves,
    load_stored_run,
    plot_run,
    register,
    tile_lc_weights,
    top_n_accuracies,
)
from brian_lcsnn.results import RunError
from brian_lcsnn.topology import Geometry, competing, competition_pairs, local_pairs

codegen_independent = pytest.mark.codegen_independent  # every test but the real run's

GEOMETRY = Geometry(crop=8, kernel_size=4, stride=2, n_filters=4)  # side 3, 9 locations, 36 Y neurons
N_TEST = 30
SHOWCASE, STEPS = 2, 50  # fake showcase: 2 samples of 50 steps


def _patch_voting_accuracy(counts, labels, votes):
    """Patch voting written out sample by sample (independent of brian_lcsnn.readout)."""
    correct = 0
    for s, label in zip(counts, labels, strict=True):
        scores = np.array([sum(max(s[f, loc] * v[f, loc] for f in range(s.shape[0])) for loc in range(s.shape[1]))
                           for v in votes])  # fmt: skip
        silent = not s.any() or not scores.any()
        correct += (not silent) and int(np.argmax(scores)) == label
    return correct / len(labels)


def _write_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


@pytest.fixture
def fake_run(tmp_path):
    """A run directory with consistent shapes and deterministic random data (learned YY, some silent samples)."""
    g, rng = GEOMETRY, np.random.default_rng(7)
    run = tmp_path / "20260101-000000-fake-abcdef"
    run.mkdir()
    protocol = {"name": "fake", "seed": 1, "dataset": {"name": "mnist", "crop": g.crop},
                "network": {"architecture": "LC", "n_filters": g.n_filters, "kernel_size": g.kernel_size,
                            "stride": g.stride, "c_w": -100, "yy_pairs": "competition"},
                "simulation": {"time_per_sample": "250 ms"},
                "phases": [{"type": "train", "name": "train", "n": 10},
                           {"type": "calibrate", "name": "calibrate", "n": 40},
                           {"type": "test", "name": "test", "n": N_TEST}]}  # fmt: skip
    (run / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    (run / "run.json").write_text(json.dumps({"id": run.name, "name": "fake", "status": "finished"}))
    xy_i, xy_j = local_pairs(g)
    yy_i, yy_j = competition_pairs(g)
    yy_w = -rng.uniform(0, 200, len(yy_i))
    _write_npz(run / "state.npz", xy_w=rng.random(g.n_xy), xy_i=xy_i, xy_j=xy_j, yy_w=yy_w, yy_i=yy_i, yy_j=yy_j,
               theta=rng.uniform(0, 0.05, g.n_neurons))  # fmt: skip
    weights = yy_w[competing(g, yy_i, yy_j)]
    hist, edges = np.histogram(weights, bins=50)
    _write_npz(run / "competition" / "final.npz", weights=weights, counts=hist, edges=edges)
    votes = rng.gamma(0.5, 1.0, (10, g.n_filters, g.n_locations))
    votes[:, 0, 0] = 0.0  # a neuron that never spiked in calibration
    _write_npz(run / "readout" / "votes.npz", votes=votes)
    counts = rng.poisson(0.4, (N_TEST, g.n_neurons)).astype(np.uint16)
    counts[[3, 17]] = 0  # samples without any Y spike: the confusion matrix gets a "none" column
    labels = (np.arange(N_TEST) % 10).astype(np.uint8)
    _write_npz(run / "counts" / "test.npz", counts=counts, labels=labels, image_indices=np.arange(N_TEST))
    shaped = counts.reshape(N_TEST, g.n_filters, g.n_locations)
    acc = _patch_voting_accuracy(shaped, labels, votes)
    entry = {"accuracy": acc, "error": float(np.sqrt(acc * (1 - acc) / N_TEST)), "n": N_TEST, "no_spike": 2}
    scores = {"test": {"patch_voting": entry, "all_voting": {**entry, "accuracy": acc / 2},
                       "spikes_first": {**entry, "accuracy": acc / 3},
                       "linear": {**entry, "accuracy": 0.5}}}  # fmt: skip
    (run / "scores.json").write_text(json.dumps(scores))
    points = [
        {
            "samples": n,
            "seconds": 1.0,
            "scores": {m: {**e, "accuracy": min(1.0, e["accuracy"] + n / 20)} for m, e in scores["test"].items()},
        }
        for n in (0, 5, 10)
    ]
    curve = {"phase": "train", "evaluate_every": 5, "calibrate": 40, "test": N_TEST, "points": points}
    (run / "curves").mkdir()
    (run / "curves" / "train.json").write_text(json.dumps(curve))
    _write_npz(run / "showcase.npz", **_fake_showcase(rng))
    return run


def _fake_showcase(rng):
    """showcase.npz as the runner writes it: images, predictions, best voters' voltages, every spike."""
    g, n = GEOMETRY, SHOWCASE
    best = rng.integers(0, g.n_filters, (n, g.n_locations)) * g.n_locations + np.arange(g.n_locations)
    sample = np.repeat(np.arange(n), 40)
    neuron = np.where(np.arange(2 * 40) % 2, best[sample, rng.integers(0, g.n_locations, 2 * 40)],
                      rng.integers(0, g.n_neurons, 2 * 40))  # fmt: skip
    counts = np.bincount(sample * g.n_neurons + neuron, minlength=n * g.n_neurons).reshape(n, g.n_filters, -1)
    return {"images": rng.integers(0, 256, (n, 28, 28)).astype(np.uint8), "labels": np.array([7, 2], dtype=np.uint8),
            "image_indices": np.arange(n), "phase": np.array("test"), "crop": g.crop,
            "methods": np.array(["patch_voting", "all_voting", "spikes_first", "linear"]),
            "predictions": np.array([[7, 7, 1, 7], [-1, 3, 2, 2]]), "counts": counts.astype(np.uint16),
            "best_voters": best, "best_voltages_mV": rng.uniform(-80, -55, (n, g.n_locations, STEPS)),
            "threshold_mV": np.full((n, g.n_locations), -50.0) + rng.uniform(0, 5, (n, g.n_locations)),
            "spike_sample": sample, "spike_neuron": neuron, "spike_time_ms": rng.integers(0, STEPS, 2 * 40) * 1.0,
            "dt_ms": 1.0}  # fmt: skip


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _check_pngs(paths):
    for path in paths:
        assert path.stat().st_size > 5000, path.name
        width, height = _png_size(path)
        assert 300 <= width <= 4000 and 200 <= height <= 4000, (path.name, width, height)


@codegen_independent
def test_every_figure_writes_a_png(fake_run):
    paths = plot_run(fake_run)
    assert [p.name for p in paths] == [f"{name}.png" for name in FIGURES]
    assert all(p.parent == fake_run / "figures" for p in paths)
    _check_pngs(paths)


@codegen_independent
def test_named_figures_and_other_formats(fake_run):
    (svg,) = plot_run(fake_run, ["confusion"], fmt="svg")
    assert svg.name == "confusion.svg" and b"<svg" in svg.read_bytes()[:500]
    (pdf,) = plot_run(fake_run, ["theta"], fmt="pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"


@codegen_independent
def test_figures_without_their_data_are_skipped(fake_run, caplog):
    state = dict(np.load(fake_run / "state.npz"))
    state["yy_w"][:] = -100.0  # a competition that did not learn
    np.savez_compressed(fake_run / "state.npz", **state)
    (fake_run / "competition" / "final.npz").unlink()
    (fake_run / "counts" / "test.npz").unlink()
    with caplog.at_level("WARNING", logger="brian_lcsnn.figures"):
        paths = plot_run(fake_run, ["weights_yy", "competition_histogram", "confusion", "theta"])
    assert [p.name for p in paths] == ["theta.png"]
    assert "did not learn" in caplog.text and "counts/test.npz" in caplog.text


@codegen_independent
def test_unknown_figure_is_a_run_error(fake_run):
    with pytest.raises(RunError, match="unknown figure 'nope'"):
        plot_run(fake_run, ["votes", "nope"])
    with pytest.raises(RunError, match="not a run directory"):
        plot_run(fake_run / "figures")


@codegen_independent
def test_top_n_at_10_is_the_stored_patch_voting(fake_run):
    run = load_stored_run(fake_run)
    acc = top_n_accuracies(run)
    assert list(acc) == list(range(1, 11))
    assert acc[10]["accuracy"] == pytest.approx(run.scores["test"]["patch_voting"]["accuracy"])
    assert figures._readout(run)[3] == "patch_voting"  # the best voting rule of scores.json


@codegen_independent
def test_stored_run_shapes(fake_run):
    run = load_stored_run(fake_run)
    assert run.geometry == GEOMETRY and run.test_phase == "test"
    assert run.counts()["counts"].shape == (N_TEST, 4, 9)
    assert run.votes().shape == (10, 4, 9)
    assert run.state()["xy_w"].shape == (GEOMETRY.n_xy,)


@codegen_independent
def test_tile_lc_weights_puts_a_weight_where_the_thesis_draws_it():
    g = GEOMETRY  # 2 x 2 grid of 4 x 4 kernels per location: blocks of 8 pixels, image 24 x 24
    pre, post = local_pairs(g)
    # filter 3, location 5 = (row 1, col 2); kernel pixel (1, 2) is input pixel (1*2 + 1, 2*2 + 2) = (3, 6)
    j, i = 3 * g.n_locations + 5, 3 * g.crop + 6
    w = np.zeros(g.n_xy)
    w[(pre == i) & (post == j)] = 7.0
    image = tile_lc_weights(w, g)
    assert image.shape == (24, 24)
    # row = loc_row * 8 + (f // 2) * 4 + 1 = 13, col = loc_col * 8 + (f % 2) * 4 + 2 = 22
    assert image[13, 22] == 7.0 and np.count_nonzero(image) == 1
    # any synapse order: the indices travel with the weights
    perm = np.random.default_rng(0).permutation(g.n_xy)
    assert np.array_equal(tile_lc_weights(w[perm], g, pre[perm], post[perm]), image)


@codegen_independent
def test_tile_lc_weights_leaves_empty_grid_slots_blank():
    g = Geometry(crop=8, kernel_size=4, stride=2, n_filters=3)  # ceil(sqrt 3) = 2: one empty slot per location
    image = tile_lc_weights(np.arange(g.n_xy, dtype=float) + 1, g)
    assert image.shape == (24, 24)
    assert np.isnan(image).sum() == g.n_locations * 16
    assert np.isnan(image[4:8, 4:8]).all() and np.isnan(image[12:16, 12:16]).all()  # slot (1, 1) of locations 0, 4
    assert not np.isnan(image[0:4, 0:8]).any() and not np.isnan(image[4:8, 0:4]).any()  # filters 0, 1, 2
    with pytest.raises(ValueError):
        tile_lc_weights(np.ones(5), g)


@codegen_independent
def test_weights_of_a_convolution_are_drawn_once(fake_run):
    from matplotlib.figure import Figure

    def drawn(run):
        fig = Figure()
        FIGURES["weights_xy"](load_stored_run(run), fig)
        (image,) = fig.axes[0].get_images()
        return np.asarray(image.get_array())

    lc = drawn(fake_run)  # every location: a 3 x 3 grid of 8 x 8 blocks (2 x 2 kernels of 4 x 4 each)
    assert lc.shape == (24, 24)
    protocol = yaml.safe_load((fake_run / "protocol.yaml").read_text())
    protocol["network"]["architecture"] = "C"
    (fake_run / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    conv = drawn(fake_run)  # the kernels are shared: the first location's block alone, each kernel once
    assert conv.shape == (8, 8)
    np.testing.assert_array_equal(conv, lc[:8, :8])
    (path,) = plot_run(fake_run, ["weights_xy"])
    _check_pngs([path])


@codegen_independent
def test_plot_command(fake_run, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plot", str(fake_run), "--figure", "votes", "--figure", "scores", "--format", "png"])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.split() == [str(fake_run / "figures" / f"{n}.png") for n in ("votes", "scores")]
    args = parser.parse_args(["plot", str(fake_run), "--figure", "bogus"])
    with pytest.raises(RunError):
        args.handler(args)


@codegen_independent
def test_new_figures_without_their_data_are_skipped(fake_run, caplog):
    (fake_run / "curves" / "train.json").unlink()
    (fake_run / "showcase.npz").unlink()
    names = ["learning_curve", "voltages_best", "input_prediction", "spikes_raster"]
    with caplog.at_level("WARNING", logger="brian_lcsnn.figures"):
        assert plot_run(fake_run, names) == []
    assert "no learning curve" in caplog.text and caplog.text.count("no showcase.npz") == 3


@codegen_independent
def test_learning_curves_count_every_training_sample(fake_run):
    protocol = yaml.safe_load((fake_run / "protocol.yaml").read_text())
    protocol["phases"].insert(1, {"type": "train", "name": "more", "n": 20})
    (fake_run / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    shutil.copy(fake_run / "curves" / "train.json", fake_run / "curves" / "more.json")
    curves = learning_curves(load_stored_run(fake_run))
    assert [(phase, offset) for phase, offset, _ in curves] == [("train", 0), ("more", 10)]  # after train's 10
    from matplotlib.figure import Figure

    fig = Figure()
    FIGURES["learning_curve"](load_stored_run(fake_run), fig)
    patch_voting = next(line for line in fig.axes[0].lines if line.get_label() == "patch voting")
    assert list(patch_voting.get_xdata()) == [0, 5, 10]
    xs = sorted({x for line in fig.axes[0].lines for x in np.atleast_1d(line.get_xdata()) if line.get_marker() == "o"})
    assert xs == [0, 5, 10, 15, 20]  # the second phase's points shifted by 10


@codegen_independent
def test_voltages_best_draws_each_best_voters_trace_threshold_and_spikes(fake_run):
    from matplotlib.figure import Figure

    run = load_stored_run(fake_run)
    show = run.showcase()
    fig = Figure()
    FIGURES["voltages_best"](run, fig)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == GEOMETRY.n_locations
    for loc, ax in enumerate(axes):
        trace, threshold, spikes = ax.lines
        np.testing.assert_array_equal(trace.get_ydata(), show["best_voltages_mV"][0, loc])
        assert threshold.get_ydata()[0] == show["threshold_mV"][0, loc]
        mine = (show["spike_sample"] == 0) & (show["spike_neuron"] == show["best_voters"][0, loc])
        assert sorted(spikes.get_xdata()) == sorted(show["spike_time_ms"][mine])


@codegen_independent
def test_input_prediction_marks_the_crop_and_every_prediction(fake_run):
    from matplotlib.figure import Figure

    fig = Figure()
    FIGURES["input_prediction"](load_stored_run(fake_run), fig)
    first, second = fig.axes
    (crop,) = first.patches
    assert crop.get_xy() == (9.5, 9.5) and crop.get_width() == GEOMETRY.crop  # (28 - 8) / 2 = 10
    expected = ["patch voting: 7 ✓", "all voting: 7 ✓", "spikes first: 1 ✗", "linear: 7 ✓"]
    assert first.get_xlabel().splitlines() == expected
    assert second.get_xlabel().splitlines()[0] == "patch voting: none ✗"


@codegen_independent
def test_spikes_raster_draws_every_spike_of_each_sample(fake_run):
    from matplotlib.figure import Figure

    run = load_stored_run(fake_run)
    show = run.showcase()
    fig = Figure()
    FIGURES["spikes_raster"](run, fig)
    assert len(fig.axes) == SHOWCASE
    for k, ax in enumerate(fig.axes):
        drawn = sorted(x for line in ax.lines if line.get_marker() == "|" for x in line.get_xdata())
        assert drawn == sorted(show["spike_time_ms"][show["spike_sample"] == k])


@pytest.mark.standalone
@pytest.mark.network
def test_every_figure_of_a_real_tiny_run(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / tiny_run.name)
    paths = plot_run(run)
    fixed = {"weights_yy", "competition_histogram"}  # a fixed competition has nothing to draw there
    assert {p.stem for p in paths} == set(FIGURES) - fixed
    _check_pngs(paths)
    stored = json.loads((run / "scores.json").read_text())["test"]
    assert top_n_accuracies(load_stored_run(run))[10]["accuracy"] == pytest.approx(stored["patch_voting"]["accuracy"])


@codegen_independent
def test_every_user_reads_the_same_headline_test_phase(fake_run, tmp_path):
    """A run with a validation and a test phase: the figures, the report, the index, a sweep's objective and the
    showcase all read the last test phase (`readout.headline_test_phase`)."""
    from brian_lcsnn import readout, report
    from brian_lcsnn.store import RunIndex
    from brian_lcsnn.sweep import objective_value

    protocol = yaml.safe_load((fake_run / "protocol.yaml").read_text())
    protocol["phases"].insert(2, {"type": "test", "name": "validation", "n": N_TEST})
    (fake_run / "protocol.yaml").write_text(yaml.safe_dump(protocol))
    scores = json.loads((fake_run / "scores.json").read_text())
    low = {m: {**e, "accuracy": e["accuracy"] / 10} for m, e in scores["test"].items()}
    (fake_run / "scores.json").write_text(json.dumps({"validation": low, "test": scores["test"]}))  # phase order
    shutil.copy(fake_run / "counts" / "test.npz", fake_run / "counts" / "validation.npz")

    assert readout.headline_test_phase(protocol["phases"]) == "test"  # the showcase's phase (runner)
    run = load_stored_run(fake_run)
    assert run.test_phase == "test"  # every figure's test counts and scores
    best = max(scores["test"][m]["accuracy"] for m in readout.VOTING_METHODS)
    assert objective_value(json.loads((fake_run / "scores.json").read_text()), "best_voting") == best
    results = tmp_path / "results"
    shutil.copytree(fake_run, results / fake_run.name)
    with RunIndex(results) as index:
        index.sync()
        row = index.records()[0]
    assert row["best_voting"] == best and row["linear"] == scores["test"]["linear"]["accuracy"]
    html = report._section_scores(run)
    assert html.count("headline") == 1 and html.index("headline") > html.index("<h3>test")


@codegen_independent
def test_learning_curve_gives_every_readout_its_own_style(fake_run):
    from matplotlib.figure import Figure

    curve = json.loads((fake_run / "curves" / "train.json").read_text())
    for point in curve["points"]:
        entry = point["scores"]["patch_voting"]
        point["scores"].update({f"top_{n}": {**entry, "accuracy": entry["accuracy"] / n} for n in range(1, 11)})
    (fake_run / "curves" / "train.json").write_text(json.dumps(curve))
    fig = Figure()
    FIGURES["learning_curve"](load_stored_run(fake_run), fig)
    lines = [line for line in fig.axes[0].lines if not line.get_label().startswith("_")]
    assert len(lines) == 4 + 10  # three voting rules, linear, top 1..10
    styles = {(str(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(styles) == len(lines)
