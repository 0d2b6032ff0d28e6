"""End to end on real MNIST: protocol -> compiled run -> readout -> run directory, through the command line."""

import json

import numpy as np
import pytest

from brian_lcsnn.cli import main

from .conftest import FIXTURES

pytestmark = [pytest.mark.standalone, pytest.mark.network]

TINY = FIXTURES / "protocols" / "tiny.yaml"


@pytest.fixture
def env(build_root, monkeypatch):
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))


def test_tiny_protocol_learns_mnist(env, tmp_path, capsys):
    assert main(["run", str(TINY), "--results", str(tmp_path), "--quiet"]) == 0
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    assert run_dir.is_dir()

    scores = json.loads((run_dir / "scores.json").read_text())
    methods = scores["test"]
    assert set(methods) == {"patch_voting", "all_voting", "spikes_first", "linear", "top_2"}
    for score in methods.values():
        assert score["n"] == 500
        assert score["error"] == pytest.approx(np.sqrt(score["accuracy"] * (1 - score["accuracy"]) / 500))
    # 400 training samples of a 225-neuron network: far above chance (0.1)
    assert max(methods[m]["accuracy"] for m in ("patch_voting", "all_voting", "spikes_first")) > 0.55
    assert methods["linear"]["accuracy"] > 0.6

    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert [p["name"] for p in info["phases"]] == ["train", "calibrate", "test"]
    assert all(p["samples_per_second"] > 0 for p in info["phases"])
    assert info["versions"]["brian2"] and info["seed"] == 3

    state = np.load(run_dir / "state.npz")
    assert state["xy_w"].shape == (225 * 144,) and state["theta"].shape == (225,)
    assert state["theta"].max() > 0  # thresholds adapted in training
    # normalisation: every Y neuron's weights sum to mean_weight x kernel_size^2
    sums = np.bincount(state["xy_j"], weights=state["xy_w"], minlength=225)
    np.testing.assert_allclose(sums, 0.46 * 144, rtol=1e-9)
    counts = np.load(run_dir / "counts" / "test.npz")
    assert counts["counts"].shape == (500, 225) and counts["labels"].shape == (500,)


def test_same_seed_same_result_and_no_recompile(env, tmp_path, capsys):
    argv = ["run", str(TINY), "--results", str(tmp_path), "--quiet", "--set", "phases.0.n=100",
            "--set", "phases.1.n=200", "--set", "phases.2.n=100"]  # fmt: skip
    assert main(argv) == 0
    assert main(argv) == 0
    first, second = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert (first / "scores.json").read_text() == (second / "scores.json").read_text()
    np.testing.assert_array_equal(np.load(first / "state.npz")["xy_w"], np.load(second / "state.npz")["xy_w"])
    assert json.loads((second / "run.json").read_text())["build"]["compiled"] is False


def test_bad_protocol_exits_2_with_one_line_and_writes_nothing(env, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text().replace("n_filters: 25", "n_filter: 25"))
    results = tmp_path / "results"
    assert main(["run", str(bad), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "network.n_filter" in err[0] and "bad.yaml" in err[0]
    assert not results.exists()


def test_wrong_equation_exits_2_with_one_line_and_writes_nothing(env, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["run", str(TINY), "--results", str(results),
                 "--set", f"models.neuron={FIXTURES / 'models' / 'broken_neuron.yaml'}"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model files" in err[0]
    assert not results.exists() or not any(results.iterdir())


def test_cuda_without_brian2cuda_is_one_clear_line(env, tmp_path, capsys):
    pytest.importorskip("brian2", reason="needs brian2")
    try:
        import brian2cuda  # noqa: F401

        pytest.skip("brian2cuda is installed")
    except ImportError:
        pass
    results = tmp_path / "results"
    assert main(["run", str(TINY), "--results", str(results), "--device", "cuda_standalone"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "brian2cuda" in err[0]
    assert not results.exists() or not any(results.iterdir())
