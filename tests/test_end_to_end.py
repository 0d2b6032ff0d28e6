"""End to end on real MNIST: protocol -> compiled run -> readout -> run directory, through the command line."""

import json

import numpy as np
import pytest

from brian_lcsnn.cli import main

from .conftest import FIXTURES, TINY_RUN, TINY_RUN_OVERRIDES

pytestmark = [pytest.mark.standalone, pytest.mark.network]

TINY = FIXTURES / "protocols" / "tiny.yaml"
NO_SHOWCASE = ["--set", "readout.showcase=0"]  # the showcase has its own test: keep the others quick


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
            "--set", "phases.1.n=200", "--set", "phases.2.n=100", *NO_SHOWCASE]  # fmt: skip
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


@pytest.mark.parametrize(("role", "model", "fragment"), [
    ("neuron", "broken_neuron.yaml", "model files"),                 # a wrong equation
    ("normalisation", "normalise_without_target.yaml", "norm_target"),  # no norm_target for the run to set
])  # fmt: skip
def test_unbuildable_model_exits_2_with_one_line_and_writes_nothing(env, tmp_path, capsys, role, model, fragment):
    results = tmp_path / "results"
    code = main(["run", str(TINY), "--results", str(results), "--set", f"models.{role}={FIXTURES / 'models' / model}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
    assert not results.exists() or not any(results.iterdir())


def test_cuda_without_brian2cuda_is_one_clear_line(env, tmp_path, capsys):
    pytest.importorskip("brian2", reason="needs brian2")
    try:
        import brian2cuda  # noqa: F401 -- only whether it imports

        pytest.skip("brian2cuda is installed")
    except ImportError:
        pass
    results = tmp_path / "results"
    assert main(["run", str(TINY), "--results", str(results), "--device", "cuda_standalone"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "brian2cuda" in err[0]
    assert not results.exists() or not any(results.iterdir())


def test_two_phase_protocol_locks_clears_and_learns_each_projection(env, tmp_path, capsys):
    protocol = FIXTURES / "protocols" / "two_phase_tiny.yaml"
    assert main(["run", str(protocol), "--results", str(tmp_path), "--quiet"]) == 0
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    info = json.loads((run_dir / "run.json").read_text())
    learn = {p["name"]: p.get("learn") for p in info["phases"]}
    assert learn["train_xy"] == ["XY"] and learn["train_yy"] == ["YY"]

    def state(name):
        return np.load(run_dir / "states" / f"{name}.npz")

    assert np.all(state("lock")["yy_w"] == -100)
    assert np.all(state("train_xy")["yy_w"] == -100)  # locked while XY learned
    assert not np.array_equal(state("lock")["xy_w"], state("train_xy")["xy_w"])
    assert np.all(state("clear")["yy_w"] == 0)
    np.testing.assert_array_equal(state("lock_4")["xy_w"], state("train_yy")["xy_w"])  # XY locked
    from brian_lcsnn.api import load_run

    run = load_run(run_dir)  # the state before a phase after an unlock (which writes no state): the clear's
    np.testing.assert_array_equal(run.state_before("lock_4").yy_w, state("clear")["yy_w"])
    np.testing.assert_array_equal(run.state_before("train_xy").xy_w, state("lock")["xy_w"])
    learned = state("train_yy")["yy_w"]
    assert learned.max() <= 0 and learned.min() < 0  # anti-STDP made competition, clamped at c_w_max = 0
    competition = np.load(run_dir / "competition" / "train_yy.npz")
    assert competition["counts"].sum() == learned.size
    # the stored synapse order is the build's: grouped by the stored post index, the weights XY learned sum to the
    # normalisation's target (mean_weight x 12^2 per Y neuron), which they would not in another order; each
    # stored pre pixel lies in its post neuron's 12 x 12 field (3 x 3 locations, stride 4, on a 20 x 20 crop)
    trained = state("train_xy")
    sums = np.bincount(trained["xy_j"], weights=trained["xy_w"], minlength=225)
    np.testing.assert_allclose(sums, 0.46 * 144, rtol=1e-9)
    row, col = trained["xy_i"] // 20 - 4 * (trained["xy_j"] % 9 // 3), trained["xy_i"] % 20 - 4 * (trained["xy_j"] % 3)
    assert row.min() == col.min() == 0 and row.max() == col.max() == 11
    # readout.linear: null: the voting rules alone are scored
    assert set(json.loads((run_dir / "scores.json").read_text())["test"]) == {
        "patch_voting",
        "all_voting",
        "spikes_first",
    }


def test_learning_a_locked_projection_is_one_line_exit_2(tmp_path, capsys):
    protocol = tmp_path / "p.yaml"
    protocol.write_text(
        (FIXTURES / "protocols" / "two_phase_tiny.yaml")
        .read_text()
        .replace("{type: train, name: train_xy, n: 150}", "{type: train, name: train_xy, n: 150, learn: [XY, YY]}")
    )
    assert main(["check", str(protocol)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "phases[1].learn" in err[0] and "locked" in err[0]


def test_convolution_run_stores_one_kernel_per_channel(env, tmp_path, capsys):
    assert main(["run", str(FIXTURES / "protocols" / "c_tiny.yaml"), "--results", str(tmp_path), "--quiet"]) == 0
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    state = np.load(run_dir / "state.npz")
    kernels = state["kernels"]
    assert kernels.shape == (25, 12, 12)
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 0.5 * 144, rtol=1e-9)  # per-kernel normalisation
    # the per-synapse weights are the kernels at every location
    f, loc = state["xy_j"] // 9, state["xy_j"] % 9
    row, col = state["xy_i"] // 20 - (loc // 3) * 4, state["xy_i"] % 20 - (loc % 3) * 4
    np.testing.assert_array_equal(state["xy_w"], kernels[f, row, col])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["sizes"]["xy_parameters"] == 25 * 144
    best = max(
        json.loads((run_dir / "scores.json").read_text())["test"][m]["accuracy"]
        for m in ("patch_voting", "all_voting", "spikes_first")
    )
    assert best > 0.4  # 300 training samples of a 25-kernel C network: far above chance


def _wait_for_checkpoint(run_root, chunks, proc, timeout=300):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in run_root.glob("*/checkpoint.npz"):
            try:
                with np.load(path) as data:
                    if int(data["phase"]) * 100 + int(data["chunk"]) >= chunks:
                        return path.parent
            except (OSError, ValueError, KeyError):
                pass  # being replaced right now
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.parametrize("kill_at", [1, 101, 202])  # after a training chunk, a calibration chunk, a test chunk
def test_kill_9_and_resume_gives_the_uninterrupted_result(env, tmp_path, capsys, kill_at):
    import os
    import signal
    import subprocess
    import sys

    argv = ["run", str(TINY), "--quiet", "--set", "simulation.samples_per_chunk=100", "--set", "phases.0.n=300",
            "--set", "phases.1.n=300", "--set", "phases.2.n=300", *NO_SHOWCASE]  # fmt: skip
    whole = tmp_path / "whole"
    assert main([*argv, "--results", str(whole)]) == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "brian_lcsnn", *argv, "--results", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        run_dir = _wait_for_checkpoint(killed, kill_at, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    (reference,) = whole.iterdir()
    assert (run_dir / "scores.json").read_text() == (reference / "scores.json").read_text()
    np.testing.assert_array_equal(np.load(run_dir / "state.npz")["xy_w"], np.load(reference / "state.npz")["xy_w"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] == 1
    assert not (run_dir / "checkpoint.npz").exists()


def test_reloaded_run_reproduces_its_test_scores_and_predicts(env, tmp_path, capsys):
    from brian_lcsnn.api import load_run

    argv = ["run", str(TINY), "--quiet", "--results", str(tmp_path), "--set", "phases.0.n=200",
            "--set", "phases.1.n=300", "--set", "phases.2.n=200", *NO_SHOWCASE]  # fmt: skip
    assert main(argv) == 0
    run_dir = tmp_path / capsys.readouterr().out.strip().splitlines()[-1].split("/")[-1]
    run = load_run(run_dir)
    assert run.state.theta.max() > 0  # the thresholds come back with the weights
    assert run.rerun("test") == run.scores["test"]
    fed = run.feed_label(3, seed=0)
    assert fed["label"] == 3 and fed["counts"].shape == (25, 9) and -1 <= fed["prediction"] <= 9
    assert fed["best_voter_weights"].shape == (9, 12, 12) and fed["best_voter_voltages_mV"].shape == (9, 250)
    v, threshold = fed["best_voter_voltages_mV"], fed["best_voter_thresholds_mV"]
    for loc, neuron in enumerate(fed["best_voters"]):  # v as the threshold tests it: at and only at spike steps
        spiked = np.zeros(v.shape[1], dtype=bool)
        spiked[fed["spike_times_ms"][fed["spike_neurons"] == neuron].astype(int)] = True
        np.testing.assert_array_equal(v[loc] >= threshold[loc], spiked)
    assert v.min() < -60  # inhibition
    # a dark-on-light PNG of that digit is read back (8-bit PNG rounding: within 1) and inverted
    import matplotlib.image

    png = tmp_path / "digit.png"
    matplotlib.image.imsave(png, 255 - fed["image"], cmap="gray", vmin=0, vmax=255)
    from_png = run.feed_image(png)
    assert from_png["inverted"] is True
    assert np.abs(from_png["image"].astype(int) - fed["image"]).max() <= 1
    # a blank image makes no spike: no filter votes, so each location shows the filter closest to its
    # threshold, which at rest is the one with the lowest theta (not filter 0)
    matplotlib.image.imsave(png, np.zeros((28, 28)), cmap="gray", vmin=0, vmax=255)
    blank = run.feed_image(png, invert=False)
    assert blank["counts"].sum() == 0 and blank["prediction"] == -1
    theta = run.state.theta.reshape(25, 9)
    np.testing.assert_array_equal(blank["best_voters"], theta.argmin(axis=0) * 9 + np.arange(9))
    assert (theta.argmin(axis=0) != 0).any()


def test_two_runs_at_once_into_one_results_folder(env, tmp_path, capsys):
    import subprocess
    import sys

    argv = [sys.executable, "-m", "brian_lcsnn", "run", str(TINY), "--quiet", "--results", str(tmp_path),
            "--set", "phases.0.n=100", "--set", "phases.1.n=200", "--set", "phases.2.n=100", *NO_SHOWCASE]  # fmt: skip
    procs = [subprocess.Popen([*argv, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for seed in (1, 2)]  # fmt: skip
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode()[-500:] for _, err in outputs]
    assert main(["runs", "--results", str(tmp_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted((r["seed"], r["status"]) for r in listed) == [(1, "finished"), (2, "finished")]


def _curve_scores(run_dir):
    curve = json.loads((run_dir / "curves" / "train.json").read_text())
    return [(p["samples"], p["scores"]) for p in curve["points"]]


def test_learning_curve_leaves_the_run_as_it_was_and_survives_kill_9(env, build_root, tiny_run, tmp_path, capsys):
    """The key test of the learning curve: the same weights, thresholds and scores as without it, to the bit;
    a killed run resumes with the points it had written and ends with the uninterrupted run's curve."""
    import os
    import signal
    import subprocess
    import sys

    from brian_lcsnn.protocol import load_protocol
    from brian_lcsnn.runner import run_protocol

    protocol = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES)
    train = protocol["phases"][0]
    plain_overrides = [o for o in TINY_RUN_OVERRIDES if not o.startswith("phases.0.evaluate")]
    plain = load_protocol(TINY_RUN, [*plain_overrides, "readout.showcase=0"])
    assert "evaluate" not in plain["phases"][0]
    without = run_protocol(plain, tmp_path / "plain", build_root=build_root, progress=False)
    with_curve = tiny_run
    for name in ("state.npz", "states/train.npz", "states/test.npz", "counts/test.npz", "readout/votes.npz"):
        a, b = np.load(with_curve / name), np.load(without / name)
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    assert (with_curve / "scores.json").read_text() == (without / "scores.json").read_text()
    assert not (without / "curves").exists() and not (without / "showcase.npz").exists()

    points = _curve_scores(with_curve)
    assert [samples for samples, _ in points] == list(range(0, train["n"] + 1, train["evaluate_every"]))
    for _, scores in points:
        assert {"patch_voting", "all_voting", "spikes_first", "linear"} <= set(scores)
        assert all(e["n"] == train["evaluate"]["test"] and 0 <= e["accuracy"] <= 1 for e in scores.values())
    assert points[0][1] != points[-1][1]  # the network learned between the points
    record = json.loads((with_curve / "run.json").read_text())["phases"][0]
    assert record["curve"] == "curves/train.json" and 0 < record["evaluation_seconds"] < record["wall_seconds"]

    # killed after the first training chunk: the point at 0 is on disk, the next one maybe not
    killed = tmp_path / "killed"
    argv = [sys.executable, "-m", "brian_lcsnn", "run", str(TINY_RUN), "--quiet", "--results", str(killed),
            *(arg for o in TINY_RUN_OVERRIDES for arg in ("--set", o)), *NO_SHOWCASE]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        run_dir = _wait_for_checkpoint(killed, 1, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    before = json.loads((run_dir / "curves" / "train.json").read_text())["points"]
    assert before and before[0]["samples"] == 0
    assert main(["resume", str(run_dir), "--quiet"]) == 0
    after = json.loads((run_dir / "curves" / "train.json").read_text())["points"]
    assert after[0] == before[0]  # kept as written (its wall time too), not recomputed
    assert _curve_scores(run_dir) == points
    assert (run_dir / "scores.json").read_text() == (with_curve / "scores.json").read_text()
    np.testing.assert_array_equal(np.load(run_dir / "state.npz")["xy_w"], np.load(with_curve / "state.npz")["xy_w"])


def test_showcase_holds_voltages_and_spike_times_of_the_first_test_samples(tiny_run):
    from brian_lcsnn.protocol import load_protocol

    protocol = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES)
    g = protocol.geometry
    show = np.load(tiny_run / "showcase.npz")
    counts = np.load(tiny_run / "counts" / "test.npz")
    n, steps, locations, neurons = protocol["readout"]["showcase"], 250, g.n_locations, g.n_neurons
    np.testing.assert_array_equal(show["image_indices"], counts["image_indices"][:n])
    np.testing.assert_array_equal(show["labels"], counts["labels"][:n])
    assert show["images"].shape == (n, 28, 28) and show["images"].dtype == np.uint8
    assert list(show["methods"]) == ["patch_voting", "all_voting", "spikes_first", "linear"]
    assert show["predictions"].shape == (n, 4) and show["predictions"].min() >= -1
    np.testing.assert_array_equal(show["best_voters"] % locations, np.tile(np.arange(locations), (n, 1)))
    v, threshold = show["best_voltages_mV"], show["threshold_mV"]
    assert v.shape == (n, locations, steps) and np.isfinite(v).all()
    np.testing.assert_allclose(v[:, :, 0], -65.0)  # step 0 is the sample's own first step (from v_rest)
    sample, neuron, time_ms = show["spike_sample"], show["spike_neuron"], show["spike_time_ms"]
    assert ((time_ms >= 0) & (time_ms < steps)).all() and ((sample >= 0) & (sample < n)).all()
    # the spike times are the showcase's spike counts
    assert show["counts"].shape == (n, g.n_filters, locations)
    np.testing.assert_array_equal(np.bincount(sample * neurons + neuron, minlength=n * neurons).reshape(n, neurons),
                                  show["counts"].reshape(n, neurons))  # fmt: skip
    # recorded as the threshold tests v: a best voter spikes at exactly the steps where its trace reaches its
    # threshold (every step of the sample, the last included), and the step after a spike is v_reset
    resets = 0
    for k in range(n):
        for loc, j in enumerate(show["best_voters"][k]):
            spiked = np.zeros(steps, dtype=bool)
            spiked[time_ms[(sample == k) & (neuron == j)].astype(int)] = True
            np.testing.assert_array_equal(v[k, loc] >= threshold[k, loc], spiked, err_msg=f"sample {k}, loc {loc}")
            after = np.flatnonzero(spiked[:-1]) + 1
            np.testing.assert_allclose(v[k, loc, after], -65.0)
            resets += len(after)
    assert resets > 0
    assert json.loads((tiny_run / "run.json").read_text())["showcase_seconds"] > 0
