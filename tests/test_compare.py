"""Tests of brian_lcsnn.compare: figures across the runs of a fabricated results folder (no simulation).

The run directories are written by `tests.test_store.make_run` (the files and formats a run writes).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from brian_lcsnn import compare
from brian_lcsnn.cli import main
from brian_lcsnn.results import RunError, read_json, write_json

from .test_store import _scores, make_run

pytestmark = pytest.mark.codegen_independent

MEAN_WEIGHTS = (0.3, 0.4, 0.5)
C_WS = (-50, -100)
TAU_M = {-50: "20 ms", -100: "25 ms"}  # a protocol value with a unit, tied to c_w (a dotted-path axis)


def _accuracy(mean_weight: float, c_w: float, seed: int) -> float:
    """The fabricated patch-voting accuracy of a run (the best voting rule: all/first are lower)."""
    return round(0.5 + 0.5 * mean_weight - c_w / 1000 + 0.01 * seed, 6)


@pytest.fixture
def grid_root(tmp_path):
    """12 finished grid runs (3 mean_weight x 2 c_w, seeds 1, 2; cell (0.5, -100) has only seed 1, plus one with
    seed 3 at (0.3, -50)), an unfinished run and a run of another name, which must not count."""
    root = tmp_path / "results"
    k = 0
    for mw in MEAN_WEIGHTS:
        for cw in C_WS:
            for seed in (1, 2, 3):
                if (seed == 2 and (mw, cw) == (0.5, -100)) or (seed == 3 and (mw, cw) != (0.3, -50)):
                    continue
                acc = _accuracy(mw, cw, seed)
                scores = {"test": _scores(acc, 0.2, 0.3, linear=acc / 2 + 0.4)}
                make_run(root, f"20240101-{k:06d}-grid-{k:06x}", network={"mean_weight": mw, "c_w": cw}, seed=seed,
                         neuron={"tau_m": TAU_M[cw]}, scores=scores, name="grid")  # fmt: skip
                k += 1
    make_run(root, "20240201-000000-grid-running", network={"mean_weight": 0.3, "c_w": -50}, status="running",
             scores={"test": _scores(0.01, 0.01, 0.01)}, name="grid")  # fmt: skip
    make_run(root, "20240201-000001-other-ffffff", network={"mean_weight": 0.3, "c_w": -50},
             scores={"test": _scores(0.02, 0.01, 0.01)}, name="other")  # fmt: skip
    return root


def _expected_means():
    """Hand-computed: the mean accuracy of each (mean_weight, c_w) cell over its seeds."""
    seeds = {(mw, cw): (1, 2) for mw in MEAN_WEIGHTS for cw in C_WS}
    seeds[(0.5, -100)], seeds[(0.3, -50)] = (1,), (1, 2, 3)
    return {cell: np.mean([_accuracy(*cell, s) for s in ss]) for cell, ss in seeds.items()}, seeds


def test_grid_cells_are_the_means_over_seeds(grid_root):
    frame = compare.select_runs(grid_root, {"name": "grid"})
    assert len(frame) == 12 and set(frame["status"]) == {"finished"}  # the running run does not count
    g = compare.grid(frame, "mean_weight", "c_w")
    assert g.x_labels == ["0.3", "0.4", "0.5"] and g.y_labels == ["-100", "-50"]  # numeric order
    expected, seeds = _expected_means()
    for (mw, cw), mean in expected.items():
        r, c = g.y_labels.index(f"{cw:g}"), g.x_labels.index(f"{mw:g}")
        assert g.mean[r, c] == pytest.approx(mean) and g.n[r, c] == len(seeds[(mw, cw)])
    # one cell by hand: mean_weight 0.4, c_w -100, seeds 1 and 2: 0.5 + 0.2 + 0.1 + 0.01 / 0.02
    assert g.mean[0, 1] == pytest.approx(0.815)
    assert g.std[0, 1] == pytest.approx(np.std([0.81, 0.82], ddof=1))
    assert np.isnan(g.std[0, 2]) and g.n[0, 2] == 1  # a single run: no spread
    assert g.std[1, 0] == pytest.approx(np.std([0.71, 0.72, 0.73], ddof=1))
    table = g.table()
    assert len(table) == 6 and table["n"].sum() == 12


def test_heatmap_draws_the_cell_means(grid_root):
    from matplotlib.figure import Figure

    g = compare.grid(compare.select_runs(grid_root, {"name": "grid"}), "mean_weight", "c_w")
    fig = Figure()
    compare.draw_heatmap(g, fig)
    ax = fig.axes[0]
    drawn = np.asarray(ax.collections[0].get_array()).reshape(g.mean.shape)
    np.testing.assert_allclose(drawn, g.mean)
    texts = [t.get_text() for t in ax.texts]
    assert "0.815\n± 0.007\nn=2" in texts and any(t.endswith("n=1") and "±" not in t for t in texts)
    assert ax.get_xlabel() == "mean_weight" and ax.get_ylabel() == "c_w"


def test_a_dotted_protocol_path_with_units_is_an_axis(grid_root):
    frame = compare.select_runs(grid_root, {"name": "grid"})
    g = compare.grid(frame, "mean_weight", "parameters.neuron.tau_m", score="linear")
    assert g.y_labels == ["20 ms", "25 ms"] and g.y_unit == "ms" and list(g.y_ticks) == [20.0, 25.0]
    expected, _ = _expected_means()
    assert g.mean[1, 1] == pytest.approx(expected[(0.4, -100)] / 2 + 0.4)  # tau_m 25 ms is c_w -100


def test_bad_axes_and_filters_are_one_line_errors(grid_root):
    frame = compare.select_runs(grid_root, {"name": "grid"})
    with pytest.raises(RunError, match="unknown axis 'parameters.neuron.nope'"):
        compare.grid(frame, "mean_weight", "parameters.neuron.nope")
    with pytest.raises(RunError, match=r"axis 'kernel_size' is constant \(12\) over the 12 selected runs"):
        compare.grid(frame, "mean_weight", "kernel_size")
    with pytest.raises(RunError, match="unknown score 'name'"):
        compare.grid(frame, "mean_weight", "c_w", score="name")
    with pytest.raises(RunError, match="no finished run in .* matches name=nothing"):
        compare.select_runs(grid_root, {"name": "nothing"})


def test_3d_html_is_self_contained_and_holds_every_run(grid_root):
    g = compare.grid(compare.select_runs(grid_root, {"name": "grid"}), "mean_weight", "c_w")
    page = compare.grid_3d_html(g)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)  # plotly.js inline: opens offline
    assert "cdn" not in " ".join(re.findall(r"<script[^>]*>", page)).lower()
    assert len(page) > 1_000_000 and "Plotly.newPlot" in page
    start = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", page).end()
    data, _ = json.JSONDecoder().raw_decode(page, start)  # the traces, as the page hands them to plotly.js
    surface, points = (next(t for t in data if t["type"] == kind) for kind in ("surface", "scatter3d"))
    np.testing.assert_allclose(np.array(surface["z"], dtype=float), g.mean)  # null (no run) -> NaN
    assert surface["x"] == [0.3, 0.4, 0.5] and surface["y"] == [-100, -50]
    hover = {text.split("<br>")[0]: text for text in points["text"]}
    assert sorted(hover) == sorted(f"run {i}" for i in g.points["id"]) and len(hover) == 12
    one = hover["run 20240101-000001-grid-000001"]  # mean_weight 0.3, c_w -50, seed 2
    assert one.split("<br>")[1:5] == ["seed 2", "mean_weight = 0.3", "c_w = -50", "best_voting = 0.7200"]
    assert sorted(zip(points["x"], points["y"], points["z"], strict=True)) == sorted(
        zip(g.points["x_value"], g.points["y_value"], g.points["score"], strict=True)
    )
    assert "20240201-000000-grid-running" not in page and "other-ffffff" not in page


def test_plot_command_writes_figure_csv_and_html(grid_root, capsys):
    code = main(["plot", "--runs", "name=grid", "--x", "mean_weight", "--y", "c_w", "--results", str(grid_root)])
    assert code == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert [p.name for p in paths] == [f"grid_best_voting_mean_weight_c_w.{e}" for e in ("png", "csv", "html")]
    assert all(p.parent == grid_root / "figures" and p.stat().st_size > 200 for p in paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    csv = paths[1].read_text().splitlines()
    assert csv[0] == "mean_weight,c_w,mean,std,n" and len(csv) == 7
    # the figures folder is not a run: a second call over the same folder still works
    out = grid_root.parent / "elsewhere"
    assert main(["plot", "--runs", "name=grid", "--runs", "seed=1", "--x", "mean_weight", "--y", "c_w",
                 "--results", str(grid_root), "--out", str(out), "--format", "svg"]) == 0  # fmt: skip
    assert (out / "grid_best_voting_mean_weight_c_w.svg").is_file()
    assert (out / "grid_best_voting_mean_weight_c_w.csv").read_text().count(",1\n") == 6  # seed 1 only: n = 1


@pytest.mark.parametrize(
    "argv, message",
    [(["--runs", "name=nothing", "--x", "mean_weight", "--y", "c_w"], "no finished run in"),
     (["--runs", "name=grid", "--x", "mean_weight", "--y", "bogus"], "unknown axis 'bogus'"),
     (["--runs", "name=grid", "--x", "mean_weight", "--y", "stride"], "axis 'stride' is constant"),
     (["--runs", "name", "--x", "mean_weight", "--y", "c_w"], "--runs 'name': expected KEY=VALUE"),
     (["--runs", "name=grid", "--x", "mean_weight"], "give both --x and --y"),
     (["--runs", "name=grid"], "give --x and --y"),
     (["RUN_DIR", "--x", "mean_weight", "--y", "c_w"], "not both")],
)  # fmt: skip
def test_plot_command_errors_exit_2_with_one_line(grid_root, capsys, argv, message):
    assert main(["plot", *argv, "--results", str(grid_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (grid_root / "figures").exists()


def test_architecture_comparison(tmp_path, capsys):
    root = tmp_path / "results"
    nets = {("LC", 25, 12): (34_200, [0.80, 0.78, 0.79]), ("LC", 100, 12): (547_200, [0.88, 0.86]),
            ("C", 25, 12): (16_200, [0.66, 0.64, 0.65]), ("FC", 100, 20): (49_900, [0.81])}  # fmt: skip
    k = 0
    for (arch, n_filters, kernel), (params, accs) in nets.items():
        for seed, acc in enumerate(accs, 1):
            run = make_run(root, f"20240301-{k:06d}-arch-{k:06x}", seed=seed, scores={"test": _scores(acc, 0.1, 0.1,
                           linear=acc + 0.05)}, network={"architecture": arch, "n_filters": n_filters,
                           "kernel_size": kernel})  # fmt: skip
            info = read_json(run / "run.json")
            info["sizes"]["total_parameters"] = params
            write_json(run / "run.json", info)
            k += 1
    table = compare.architecture_table(compare.select_runs(root))
    assert list(zip(table["architecture"], table["n_filters"], table["total_parameters"], table["runs"],
                    strict=True)) == [("C", 25, 16_200, 3), ("FC", 100, 49_900, 1), ("LC", 25, 34_200, 3),
                                      ("LC", 100, 547_200, 2)]  # fmt: skip
    np.testing.assert_allclose(table["best_voting_mean"], [0.65, 0.81, 0.79, 0.87])
    np.testing.assert_allclose(table["best_voting_std"], [0.01, np.nan, 0.01, np.std([0.88, 0.86], ddof=1)])
    np.testing.assert_allclose(table["linear_mean"], [0.70, 0.86, 0.84, 0.92])
    assert main(["plot", "--compare-architectures", "--results", str(root)]) == 0
    out, err = capsys.readouterr()
    assert [Path(p).name for p in out.split()] == ["architectures.png", "architectures.csv", "architectures.md"]
    assert "| LC | 100 | 12 | 547,200 | 2 | 0.8700 ± 0.0141 | 0.9200 ± 0.0141 |" in err
    assert "| FC | 100 | 20 | 49,900 | 1 | 0.8100 | 0.8600 |" in err
    assert (root / "figures" / "architectures.md").read_text() in err


def test_architecture_comparison_pools_only_seeds_of_the_same_settings(tmp_path, capsys):
    """LC 25/12 at two c_w (two seeds each) and LC 100/12 at one: three rows, each over the seeds of one setting."""
    root = tmp_path / "results"
    runs = [("LC", 25, -100, 1, 0.80), ("LC", 25, -100, 2, 0.78), ("LC", 25, -25, 1, 0.60), ("LC", 25, -25, 2, 0.64),
            ("LC", 100, -100, 1, 0.88), ("LC", 100, -100, 2, 0.86)]  # fmt: skip
    for k, (arch, n_filters, c_w, seed, acc) in enumerate(runs):
        make_run(root, f"20240301-{k:06d}-arch-{k:06x}", seed=seed, scores={"test": _scores(acc, 0.1, 0.1)},
                 network={"architecture": arch, "n_filters": n_filters, "kernel_size": 12, "c_w": c_w})  # fmt: skip
    table = compare.architecture_table(compare.select_runs(root))
    assert list(zip(table["n_filters"], table["settings"], table["runs"], strict=True)) == [
        (25, "network.c_w=-100", 2), (25, "network.c_w=-25", 2), (100, "", 2)]  # fmt: skip
    np.testing.assert_allclose(table["best_voting_mean"], [0.79, 0.62, 0.87])
    np.testing.assert_allclose(table["best_voting_std"], [np.std([0.8, 0.78], ddof=1), np.std([0.6, 0.64], ddof=1),
                                                          np.std([0.88, 0.86], ddof=1)])  # fmt: skip
    assert main(["plot", "--compare-architectures", "--results", str(root)]) == 0
    err = capsys.readouterr().err
    assert "| LC | 25 | 12 | network.c_w=-25 | 34,200 | 2 | 0.6200 ± 0.0283 |" in err
    assert "| LC | 100 | 12 | — | 34,200 | 2 | 0.8700 ± 0.0141 |" in err
