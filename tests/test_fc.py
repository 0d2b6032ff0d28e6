"""An FC network end to end through the command line (runtime device: no build), small and short."""

import json

import numpy as np
import pytest

from brian_lcsnn.cli import main

from .conftest import TINY_RUN

pytestmark = [pytest.mark.runtime, pytest.mark.network]

FC = ("network.architecture=FC", "network.kernel_size=20", "network.n_filters=10", "simulation.device=runtime",
      "simulation.time_per_sample=50 ms", "simulation.samples_per_chunk=20", "phases.0.n=20", "phases.1.n=20",
      "phases.2.n=20", "readout.top_n=[]", "readout.showcase=0")  # fmt: skip


def test_fc_run_end_to_end(tmp_path, capsys):
    argv = ["run", str(TINY_RUN), "--results", str(tmp_path), "--quiet"]
    assert main(argv + [a for setting in FC for a in ("--set", setting)]) == 0
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and [p["name"] for p in info["phases"]] == ["train", "calibrate", "test"]
    state = np.load(run_dir / "state.npz")
    # one location: every Y neuron sees all 400 pixels, and competes with the 9 others
    assert state["xy_w"].shape == (10 * 400,) and set(state["xy_j"]) == set(range(10))
    np.testing.assert_array_equal(np.bincount(state["xy_j"]), np.full(10, 400))
    np.testing.assert_allclose(np.bincount(state["xy_j"], weights=state["xy_w"]), 0.46 * 400, rtol=1e-9)
    assert state["yy_w"].shape == (90,) and np.all(state["yy_i"] != state["yy_j"])
    assert state["theta"].max() > 0  # thresholds adapted in training
    counts = np.load(run_dir / "counts" / "test.npz")
    assert counts["counts"].shape == (20, 10) and counts["counts"].sum() > 0
    scores = json.loads((run_dir / "scores.json").read_text())["test"]
    assert {"patch_voting", "all_voting", "spikes_first", "linear"} <= set(scores)
    assert all(entry["n"] == 20 for entry in scores.values())
