"""Sweeps (brian_lcsnn.sweep): sweep files, trial generation, and real sweeps of a tiny protocol (LC 4 filters,
200 samples per phase) on the local executor and on a Dask LocalCluster of 2 workers, with a client killed
mid-sweep and a trial killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brian_lcsnn.cli import main
from brian_lcsnn.results import RunError
from brian_lcsnn.sweep import (
    Trial,
    grid_trials,
    load_sweep,
    objective_value,
    random_trials,
    run_sweep,
)

SWEEPS = Path(__file__).parent / "sweeps"
TINY_GRID = SWEEPS / "tiny_grid.yaml"

# ---------------------------------------------------------------- sweep files (no simulation)


@pytest.mark.codegen_independent
@pytest.mark.parametrize(
    "name, key",
    [
        ("unknown_key", "axis: unknown key"),
        ("bad_range", "axes.network.c_w: min must be < max"),
        ("grid_without_num", "axes.network.c_w: a grid range needs num"),
        ("bad_objective", "objective: no test phase 'validation'"),
        ("bad_trial", "network.mean_weight: must be > 0"),
        ("unknown_protocol_key", "network.n_filter: unknown key"),
        ("missing_protocol", "protocol: no such protocol file"),
        ("random_without_n", "search.n: a random search needs n"),
        ("bad_seeds", "seeds[1]: expected an integer"),
    ],
)
def test_bad_sweep_file_is_one_line_exit_2_and_runs_nothing(name, key, tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["sweep", str(SWEEPS / f"{name}.yaml"), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{name}.yaml" in err[0] and key in err[0], err
    assert not results.exists()


@pytest.mark.codegen_independent
def test_grid_is_the_product_of_the_axes_with_every_seed():
    sweep = load_sweep(SWEEPS / "searches.yaml")
    trials = grid_trials(sweep)
    assert len(trials) == 3 * 2 * 2 * 3 * 2 * 2  # mean_weight, c_w, tau_tgt, nu_pot, stride; x 2 seeds
    assert len({t.key for t in trials}) == len(trials)
    assert [t.seed for t in trials[:4]] == [1, 2, 1, 2]  # seeds innermost
    assert sorted({t.values["network.mean_weight"] for t in trials}) == [0.3, 0.4, 0.5]  # linspace, tidied
    assert sorted({t.values["parameters.xy.nu_pot"] for t in trials}) == [1e-5, 1e-4, 1e-3]  # geometric
    assert sorted({t.values["network.stride"] for t in trials}) == [2, 4]
    first = trials[0]
    assert first.values == {"network.mean_weight": 0.3, "network.c_w": -100, "parameters.neuron.tau_tgt": 10,
                            "parameters.xy.nu_pot": 1e-5, "network.stride": 2}  # fmt: skip
    overrides = sweep.overrides(first)
    assert overrides[0] == "network.n_filters=4"  # the sweep's fixed values first
    assert "parameters.neuron.tau_tgt=10 ms" in overrides and overrides[-1] == "seed=1"
    assert "parameters.xy.nu_pot=1.0e-05" in overrides  # a float in YAML (1e-05 would read as a string)
    from brian_lcsnn.protocol import load_protocol

    protocol = load_protocol(sweep.protocol_path, overrides)
    assert protocol["parameters"]["xy"]["nu_pot"] == 1e-5 and protocol["parameters"]["neuron"]["tau_tgt"] == "10 ms"
    assert protocol["network"]["n_filters"] == 4 and protocol["seed"] == 1
    assert sweep.objective == "test.linear" and sweep.budget == {"max_trials": 1000, "max_hours": 2}


@pytest.mark.codegen_independent
def test_random_draws_are_reproducible_and_within_their_ranges(tmp_path):
    path = tmp_path / "random.yaml"
    path.write_text(f"""
protocol: {SWEEPS.parent / "fixtures" / "protocols" / "tiny.yaml"}
axes:
  network.mean_weight: {{min: 0.2, max: 0.7}}
  parameters.xy.nu_pot: {{min: 1.0e-4, max: 1.0e-1, log: true}}
  network.c_w: {{min: -200, max: -10, type: int}}
  readout.linear: [logistic, sgd]
seeds: [1, 2]
search: {{method: random, n: 40, seed: 7}}
""")
    sweep = load_sweep(path)
    trials = random_trials(sweep)
    assert trials == random_trials(load_sweep(path))  # the same trials on every start
    sets = [t.values for t in trials[::2]]
    assert len(sets) == 40 and [t.seed for t in trials[:2]] == [1, 2]
    assert all(0.2 <= v["network.mean_weight"] <= 0.7 for v in sets)
    assert all(isinstance(v["network.c_w"], int) and -200 <= v["network.c_w"] <= -10 for v in sets)
    assert {v["readout.linear"] for v in sets} == {"logistic", "sgd"}
    logs = np.log10([v["parameters.xy.nu_pot"] for v in sets])
    assert logs.min() >= -4 and logs.max() <= -1 and (logs < -2.5).sum() > 8  # log-uniform: low decades too


@pytest.mark.codegen_independent
def test_objective_value():
    def s(**acc):
        return {m: {"accuracy": a, "error": 0.0, "n": 10, "no_spike": 0} for m, a in acc.items()}

    scores = {"test": s(patch_voting=0.5, all_voting=0.6, spikes_first=0.4, linear=0.9),
              "test_late": s(patch_voting=0.7, all_voting=0.6, spikes_first=0.8, linear=0.95)}  # fmt: skip
    assert objective_value(scores, "best_voting") == 0.8  # the last test phase
    assert objective_value(scores, "test.best_voting") == 0.6
    assert objective_value(scores, "linear") == 0.95 and objective_value(scores, "test.patch_voting") == 0.5
    assert objective_value({}, "best_voting") is None


@pytest.mark.codegen_independent
def test_a_restart_with_another_base_protocol_is_refused(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    from brian_lcsnn.sweep import _claim

    _claim(load_sweep(TINY_GRID), results).close()
    with pytest.raises(RunError, match="ran another base protocol"):
        _claim(load_sweep(TINY_GRID, ["phases.0.n=300"]), results)
    held = _claim(load_sweep(TINY_GRID), results)
    with pytest.raises(RunError, match="running in another process"):
        _claim(load_sweep(TINY_GRID), results)
    held.close()


# ---------------------------------------------------------------- real sweeps


def real(test):
    """A test that runs real sweeps: compiled builds on MNIST."""
    return pytest.mark.standalone(pytest.mark.network(test))


def _runs(results: Path) -> dict:
    """{trial key: run directory} of the runs in a results folder (one run per trial expected)."""
    runs = {}
    for run_json in results.glob("*/run.json"):
        trial = json.loads(run_json.read_text())["tags"]["trial"]
        assert trial not in runs, f"trial {trial} ran twice"
        runs[trial] = run_json.parent
    return runs


def _assert_same_results(runs: dict, reference: dict) -> None:
    assert sorted(runs) == sorted(reference)
    for trial, run_dir in runs.items():
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
        assert (run_dir / "scores.json").read_text() == (reference[trial] / "scores.json").read_text(), trial
        state, ref = np.load(run_dir / "state.npz"), np.load(reference[trial] / "state.npz")
        for key in ("xy_w", "yy_w", "theta"):
            np.testing.assert_array_equal(state[key], ref[key])


@pytest.fixture(scope="module")
def local_sweep(build_root, tmp_path_factory):
    """The tiny grid (2 mean_weight x 2 seeds) on 2 local workers: the reference of the other executors."""
    results = tmp_path_factory.mktemp("local")
    summary = run_sweep(load_sweep(TINY_GRID), results, workers=2, build_root=build_root, progress=False)
    return results, summary


@real
def test_local_sweep_runs_every_trial_once_and_indexes_them(local_sweep, capsys):
    results, summary = local_sweep
    runs = _runs(results)
    assert sorted(runs) == sorted(t.key for t in grid_trials(load_sweep(TINY_GRID)))
    assert summary["trials"] == {"finished": 4, "failed": 0, "interrupted": 0, "planned": 4, "pending": 0}
    for trial, run_dir in runs.items():
        info = json.loads((run_dir / "run.json").read_text())
        assert info["status"] == "finished" and info["tags"]["sweep"] == "tiny_grid"
        assert info["seed"] == info["tags"]["seed"] and trial.endswith(f"seed={info['seed']}")
        protocol = (run_dir / "protocol.yaml").read_text()
        assert f"mean_weight: {info['tags']['values']['network.mean_weight']}" in protocol
        assert "/workers/" in info["build"]["directory"]  # each worker has its build folder
    assert main(["runs", "--results", str(results), "--sweep", "tiny_grid", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(r["trial"] for r in listed) == sorted(runs)


@real
def test_seeds_summary_is_mean_and_std_of_the_stored_scores(local_sweep, capsys):
    results, summary = local_sweep
    runs = _runs(results)
    stored = json.loads((results / "sweeps" / "tiny_grid" / "summary.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert len(summary["parameter_sets"]) == 2
    for group in summary["parameter_sets"]:
        mw = group["values"]["network.mean_weight"]
        scores = [json.loads((runs[f"network.mean_weight={mw} seed={s}"] / "scores.json").read_text()) for s in (1, 2)]
        assert group["n"] == 2 and sorted(group["seeds"]) == [1, 2]
        for method in ("patch_voting", "all_voting", "spikes_first", "linear"):
            values = [s["test"][method]["accuracy"] for s in scores]
            got = group["scores"][f"test.{method}"]
            assert got["mean"] == pytest.approx(np.mean(values)) and got["n"] == 2
            assert got["std"] == pytest.approx(np.std(values, ddof=1))
        best = [max(s["test"][m]["accuracy"] for m in ("patch_voting", "all_voting", "spikes_first")) for s in scores]
        assert group["objective"]["mean"] == pytest.approx(np.mean(best))
        assert group["objective"]["std"] == pytest.approx(np.std(best, ddof=1))
    # the best trial is the best single run; parameter sets are sorted by their mean objective
    every = [
        (objective_value(json.loads((d / "scores.json").read_text()), "test.best_voting"), t) for t, d in runs.items()
    ]
    assert summary["best"]["objective"] == max(every)[0]
    means = [g["objective"]["mean"] for g in summary["parameter_sets"]]
    assert means == sorted(means, reverse=True)
    csv = (results / "sweeps" / "tiny_grid" / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("network.mean_weight,n,seeds,objective_mean,objective_std") and len(csv) == 3
    # --summary: from the index, nothing run
    assert main(["sweep", str(TINY_GRID), "--results", str(results), "--summary"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 trials finished" in out and out.strip().endswith("summary.json")
    assert _runs(results) == runs


def _running_trial(results: Path, name: str = "tiny_grid"):
    """(trial key, pid of its process) of a trial that is running and has checkpointed, else None."""
    from brian_lcsnn.sweep import _trial_hash

    for run_json in results.glob("*/run.json"):
        try:
            info = json.loads(run_json.read_text())
            if info.get("status") != "running" or not (run_json.parent / "checkpoint.npz").exists():
                continue
            lock = results / "sweeps" / name / "locks" / f"{_trial_hash(name, info['tags']['trial'])}.lock"
            pid = int(lock.read_text().split()[0])
            os.kill(pid, 0)  # alive
        except (OSError, ValueError, IndexError, KeyError):
            continue
        return info["tags"]["trial"], pid
    return None


@real
def test_dask_local_cluster_gives_the_local_results_and_survives_a_killed_trial(local_sweep, build_root, tmp_path):
    """A 2-worker LocalCluster: the same scores and states as the local executor for the same seeds, although
    one trial's process is killed (SIGKILL) mid-run: the task retries it, which resumes its run."""
    results = tmp_path / "dask"
    results.mkdir()
    summary, killed = _sweep_killing(results, lambda trial, pid: os.killpg(pid, signal.SIGKILL),
                                     local_cluster=2, build_root=build_root)  # fmt: skip
    assert killed, "no trial was caught mid-run"
    assert summary["trials"]["finished"] == 4 and summary["failed"] == []
    runs = _runs(results)
    _assert_same_results(runs, _runs(local_sweep[0]))
    assert json.loads((runs[killed["trial"]] / "run.json").read_text())["resumed"] == 1  # resumed, not restarted


def _sweep_killing(results: Path, kill, **executor) -> tuple[dict, dict]:
    """The tiny grid into ``results``; meanwhile ``kill(trial, pid)`` is called once on a running trial
    (SIGKILL to the trial's process group: the process and the compiled binary it runs)."""
    killed, stop = {}, threading.Event()

    def watch():
        while not stop.is_set() and not killed:
            found = _running_trial(results)
            if found:
                kill(*found)
                killed["trial"] = found[0]
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary = run_sweep(load_sweep(TINY_GRID), results, progress=False, **executor)
    finally:
        stop.set()
        watcher.join()
    return summary, killed


@real
def test_sigkill_of_the_client_and_restart_reruns_no_finished_trial(local_sweep, build_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))  # the workers' build folders of the other tests
    results = tmp_path / "killed"
    argv = [sys.executable, "-m", "brian_lcsnn", "sweep", str(TINY_GRID), "--results", str(results), "--workers", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill the client once a trial finished and the next one runs
            statuses = [json.loads(p.read_text()).get("status") for p in results.glob("*/run.json")]
            if "finished" in statuses and "running" in statuses:
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(1.5)  # the orphaned trial process notices its parent is gone and kills itself
    before = {}
    for run_json in results.glob("*/run.json"):
        info = json.loads(run_json.read_text())
        before[info["tags"]["trial"]] = (info["status"], run_json.read_bytes())
    finished = {t for t, (status, _) in before.items() if status == "finished"}
    assert finished and len(finished) < 4
    assert main(["sweep", str(TINY_GRID), "--results", str(results), "--workers", "2", "--quiet"]) == 0
    runs = _runs(results)
    for trial in finished:  # untouched: not run again, not even rewritten
        assert (runs[trial] / "run.json").read_bytes() == before[trial][1]
    for trial, (status, _) in before.items():
        if status != "finished":  # the interrupted one was resumed in its own run directory
            assert json.loads((runs[trial] / "run.json").read_text()).get("resumed", 0) >= 1
    _assert_same_results(runs, _runs(local_sweep[0]))


@real
@pytest.mark.slow
def test_dask_worker_killed_mid_trial_loses_nothing(local_sweep, build_root, tmp_path):
    """SIGKILL to the Dask worker process running a trial: the trial process dies with it, Dask reschedules
    the task on a live worker, and the run resumes from its checkpoint; finished trials are kept."""
    from distributed import LocalCluster

    def kill_worker(trial, pid):
        worker = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the trial's parent
        os.kill(worker, signal.SIGKILL)

    results = tmp_path / "worker_killed"
    results.mkdir()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary, killed = _sweep_killing(results, kill_worker, scheduler=cluster.scheduler_address,
                                         build_root=build_root)  # fmt: skip
    assert killed
    assert summary["trials"]["finished"] == 4 and summary["failed"] == []
    runs = _runs(results)
    _assert_same_results(runs, _runs(local_sweep[0]))
    assert json.loads((runs[killed["trial"]] / "run.json").read_text())["resumed"] == 1


@pytest.mark.codegen_independent
def test_trial_identity_ignores_value_order():
    a = Trial({"network.c_w": -50, "network.mean_weight": 0.4}, 1)
    b = Trial({"network.mean_weight": 0.4, "network.c_w": -50}, 1)
    assert a.key == b.key == "network.c_w=-50 network.mean_weight=0.4 seed=1" and a.group == b.group


class _FakeExecutor:
    """Runs a trial by writing the run directory a finished run leaves for the index (no simulation): best
    voting = 1 - (mean_weight - 0.45)^2 - (c_w + 60)^2 / 1e4, so that the search has something to find."""

    def __init__(self, results: Path, capacity: int = 2):
        self.results, self.workers, self.calls = results, capacity, []
        self.description = "a fake executor"

    def capacity(self) -> int:
        return self.workers

    def submit(self, spec: dict):
        from concurrent.futures import Future

        import yaml

        from brian_lcsnn.protocol import load_protocol
        from brian_lcsnn.results import new_run_dir, write_json, write_text

        self.calls.append(spec["trial"])
        protocol = load_protocol(spec["protocol"], spec["overrides"])
        net = protocol["network"]
        accuracy = 1 - (net["mean_weight"] - 0.45) ** 2 - (net["c_w"] + 60) ** 2 / 1e4
        run_dir = new_run_dir(self.results, "fake")
        write_text(run_dir / "protocol.yaml", yaml.safe_dump(protocol.data))
        scores = {"test": {m: {"accuracy": accuracy - 0.01 * k, "error": 0.0, "n": 10, "no_spike": 0}
                           for k, m in enumerate(("patch_voting", "all_voting", "linear"))}}  # fmt: skip
        write_json(run_dir / "scores.json", scores)
        tags = {k: spec[k] for k in ("sweep", "trial", "values", "seed")}
        write_json(run_dir / "run.json", {"id": run_dir.name, "status": "finished", "seed": spec["seed"], "tags": tags})
        future = Future()
        future.set_result({"status": "finished", "run": run_dir.name, "error": None, "scores": scores})
        return future

    def wait_one(self, futures):
        return futures[0], futures[0].result()

    def close(self):
        pass


def _fake_local_executor(tmp_path, monkeypatch):
    """A results folder, and a `_FakeExecutor` that run_sweep uses in place of local workers."""
    from brian_lcsnn import sweep as sweep_module

    results = tmp_path / "results"
    results.mkdir()
    fake = _FakeExecutor(results)
    monkeypatch.setattr(sweep_module, "LocalExecutor", lambda *args, **kwargs: fake)
    return results, fake


@pytest.mark.codegen_independent
def test_optuna_search_runs_in_batches_and_rebuilds_its_study_on_restart(tmp_path, monkeypatch):
    results, fake = _fake_local_executor(tmp_path, monkeypatch)

    def sweep_file(n):
        path = tmp_path / "optuna.yaml"
        path.write_text(f"""
name: opt
protocol: {SWEEPS.parent / "fixtures" / "protocols" / "tiny.yaml"}
set: {{network.n_filters: 4}}
axes:
  network.mean_weight: {{min: 0.2, max: 0.7}}
  network.c_w: {{min: -150, max: -10}}
search: {{method: optuna, sampler: tpe, n: {n}, seed: 3}}
objective: test.patch_voting
""")
        return load_sweep(path)

    summary = run_sweep(sweep_file(6), results, progress=False)
    assert len(fake.calls) == len(set(fake.calls)) == 6 and summary["trials"]["finished"] == 6
    values = [g["values"] for g in summary["parameter_sets"]]
    assert all(0.2 <= v["network.mean_weight"] <= 0.7 and -150 <= v["network.c_w"] <= -10 for v in values)
    assert all(len(f"{v['network.mean_weight']:.12g}".lstrip("0.")) <= 6 for v in values)  # 6 significant digits
    best = max(summary["parameter_sets"], key=lambda g: g["objective"]["mean"])
    assert summary["best"]["objective"] == best["objective"]["mean"]
    # restarted with the same n: the study is rebuilt from the index, nothing runs
    fake.calls.clear()
    run_sweep(sweep_file(6), results, progress=False)
    assert fake.calls == []
    # a trial killed mid-run (its run left "running") is asked again first and resumed: the same trial key
    run_json = next(results.glob("*/run.json"))
    info = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**info, "status": "running"}))
    summary = run_sweep(sweep_file(8), results, progress=False)
    assert fake.calls[0] == info["tags"]["trial"] and len(fake.calls) == 3
    assert summary["trials"]["finished"] == 8


@pytest.mark.codegen_independent
def test_max_hours_counts_every_invocation_of_a_sweep(tmp_path, monkeypatch):
    results, fake = _fake_local_executor(tmp_path, monkeypatch)

    def sweep_file(hours):
        path = tmp_path / "budget.yaml"
        path.write_text(f"""
name: budgeted
protocol: {SWEEPS.parent / "fixtures" / "protocols" / "tiny.yaml"}
set: {{network.n_filters: 4}}
axes:
  network.c_w: [-10, -20, -30, -40]
search: {{method: grid}}
objective: test.patch_voting
budget: {{max_hours: {hours}}}
""")
        return load_sweep(path)

    run_sweep(sweep_file(1), results, progress=False)
    spent = json.loads((results / "sweeps" / "budgeted" / "budget.json").read_text())["seconds"]
    assert len(fake.calls) == 4 and 0 <= spent < 60
    # an earlier invocation used 59 of its 60 minutes: a restart may start no trial once they are gone
    (results / "sweeps" / "budgeted" / "budget.json").write_text(json.dumps({"seconds": 3600.0}))
    for run_json in list(results.glob("*/run.json"))[:2]:  # two trials to redo
        run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "status": "failed"}))
    fake.calls.clear()
    run_sweep(sweep_file(1), results, progress=False)
    assert fake.calls == []
    run_sweep(sweep_file(2), results, progress=False)  # a larger budget: the hour left is used
    assert len(fake.calls) == 2
    assert json.loads((results / "sweeps" / "budgeted" / "budget.json").read_text())["seconds"] >= 3600


@pytest.mark.codegen_independent
@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_sweep_loads(path):
    sweep = load_sweep(path)
    assert sweep.name == path.stem and sweep.seeds
    if sweep.search["method"] == "grid":
        assert grid_trials(sweep)


@pytest.mark.codegen_independent
def test_optuna_restart_after_a_kill_in_the_last_batch_finishes_every_set(tmp_path, monkeypatch):
    """A trial of the last batch killed (its run left "running"): the restart resumes it, although the study then
    holds n trials (the finished ones and the resumed one, enqueued), and the summary has all n sets."""
    results, fake = _fake_local_executor(tmp_path, monkeypatch)
    path = tmp_path / "optuna.yaml"
    path.write_text(f"""
name: opt_last
protocol: {SWEEPS.parent / "fixtures" / "protocols" / "tiny.yaml"}
set: {{network.n_filters: 4}}
axes:
  network.mean_weight: {{min: 0.2, max: 0.7}}
search: {{method: optuna, sampler: tpe, n: 6, seed: 3}}
objective: test.patch_voting
""")
    run_sweep(load_sweep(path), results, progress=False)
    last = max(results.glob("*/run.json"), key=lambda p: json.loads(p.read_text())["tags"]["trial"] == fake.calls[-1])
    info = json.loads(last.read_text())
    assert info["tags"]["trial"] == fake.calls[-1]  # a trial of the last batch (of 2)
    last.write_text(json.dumps({**info, "status": "running"}))
    fake.calls.clear()
    summary = run_sweep(load_sweep(path), results, progress=False)
    assert fake.calls == [info["tags"]["trial"]]  # resumed, and nothing else run
    assert summary["trials"]["finished"] == 6 and len(summary["parameter_sets"]) == 6


def _processes_in_groups(groups: set) -> list:
    """The pids of live processes whose process group is one of ``groups`` (a trial and what it started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in groups:
            found.append(int(stat.parent.name))
    return found


def _in_training(results: Path, trial: str) -> bool:
    """Whether the trial's run has checkpointed in its first (train) phase: several chunks to go, time for a
    signal to reach it (through Dask too) before it finishes."""
    for run_json in results.glob("*/run.json"):
        try:
            if json.loads(run_json.read_text())["tags"]["trial"] == trial:
                with np.load(run_json.parent / "checkpoint.npz") as checkpoint:
                    return int(checkpoint["phase"]) == 0
        except (OSError, ValueError, KeyError):
            continue
    return False


def _summary_values(summary: dict) -> list:
    """A sweep summary without its run ids: what an interrupted and resumed sweep must give as an uninterrupted one."""
    return sorted(
        (json.dumps(g["values"], sort_keys=True), sorted(g["seeds"]), g["objective"], g["scores"])
        for g in summary["parameter_sets"]
    )


@real
@pytest.mark.parametrize(
    "target, signals, executor",
    [
        ("group", [signal.SIGINT], ["--workers", "2"]),
        pytest.param("group", [signal.SIGINT, signal.SIGINT], ["--workers", "2"], marks=pytest.mark.slow),
        ("client", [signal.SIGTERM], ["--workers", "2", "--progress"]),
        pytest.param("group", [signal.SIGINT], ["--local-cluster", "2"], marks=pytest.mark.slow),
        pytest.param("client", [signal.SIGTERM], ["--local-cluster", "2"], marks=pytest.mark.slow),
    ],
    ids=["sigint", "sigint_twice", "sigterm", "local_cluster_sigint", "local_cluster_sigterm"],
)
def test_signal_to_the_client_stops_the_sweep_and_a_restart_gives_the_same_summary(
    target, signals, executor, local_sweep, build_root, tmp_path, monkeypatch
):
    """SIGINT to the client's process group (Ctrl-C, once or twice) or SIGTERM to the client (Slurm), while a
    trial runs: it stops its trials (runs marked interrupted, none failed), exits 128 + signal with one line that
    says how to resume, leaves no process behind; the restart resumes the interrupted trials, leaves the finished
    ones untouched and ends with the summary of the uninterrupted sweep."""
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))
    results = tmp_path / "interrupted"
    progress = "--progress" in executor  # progress lines until the signal, none while it stops
    executor = [word for word in executor if word != "--progress"]
    argv = [sys.executable, "-m", "brian_lcsnn", "sweep", str(TINY_GRID), "--results", str(results), *executor,
            *([] if progress else ["--quiet"])]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    trial_pids = set()
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # once a trial finished and another one runs and has checkpointed
            found = _running_trial(results)
            if found:
                trial_pids.add(found[1])
            statuses = [json.loads(p.read_text()).get("status") for p in results.glob("*/run.json")]
            if found and "finished" in statuses and _in_training(results, found[0]):
                break
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.05)
        for signum in signals:
            os.killpg(proc.pid, signum) if target == "group" else os.kill(proc.pid, signum)
            time.sleep(0.3)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signals[0], err
    lines = err.strip().splitlines()
    meter = [line for line in lines if line.startswith("sweep tiny_grid: ") and " done, " in line]
    lines = [line for line in lines if line not in meter]
    name = signal.Signals(signals[0]).name
    assert len(lines) == 1 and lines[0].startswith(f"sweep tiny_grid interrupted ({name}): "), err
    assert f"resume with: lcsnn sweep {TINY_GRID.resolve()} --results {results} {' '.join(executor)}" in lines[0]
    assert _processes_in_groups(trial_pids) == []  # no trial, compiler or compiled binary left behind
    before = {}
    for run_json in results.glob("*/run.json"):
        info = json.loads(run_json.read_text())
        before[info["tags"]["trial"]] = (info["status"], run_json.read_bytes())
    statuses = sorted(status for status, _ in before.values())
    assert not progress or 1 <= len(meter) <= 1 + statuses.count("finished")  # the first, then one per finished
    assert "finished" in statuses and "interrupted" in statuses and set(statuses) <= {"finished", "interrupted"}
    assert json.loads((results / "sweeps" / "tiny_grid" / "failures.json").read_text()) == {}
    assert main(["sweep", str(TINY_GRID), "--results", str(results), "--workers", "2", "--quiet"]) == 0
    runs = _runs(results)
    for trial, (status, raw) in before.items():
        if status == "finished":  # untouched
            assert (runs[trial] / "run.json").read_bytes() == raw
        else:  # resumed from its checkpoint in its own run directory
            assert json.loads((runs[trial] / "run.json").read_text())["resumed"] == 1
    _assert_same_results(runs, _runs(local_sweep[0]))
    summary = json.loads((results / "sweeps" / "tiny_grid" / "summary.json").read_text())
    assert summary["trials"] == local_sweep[1]["trials"]
    assert _summary_values(summary) == _summary_values(json.loads(json.dumps(local_sweep[1])))


@real
def test_optuna_sweep_killed_in_its_last_batch_finishes_on_restart(build_root, tmp_path, monkeypatch):
    """SIGKILL to the client of an adaptive sweep (2 sets, 1 worker: batches of one) while the last set runs:
    the restart resumes that set (it ran nothing and exited 0 before) and the summary has both."""
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))
    path = tmp_path / "opt_kill.yaml"
    path.write_text(TINY_GRID.read_text().replace("name: tiny_grid", "name: opt_kill")
                    .replace("protocol: ../", f"protocol: {SWEEPS}/../")
                    .replace("network.mean_weight: [0.4, 0.5]", "network.mean_weight: {min: 0.4, max: 0.5}")
                    .replace("seeds: [1, 2]", "seeds: [1]\nsearch: {method: optuna, n: 2, seed: 5}"))  # fmt: skip
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "brian_lcsnn", "sweep", str(path), "--results", str(results), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # the first set finished, the second (the last batch) runs
            statuses = [json.loads(p.read_text()).get("status") for p in results.glob("*/run.json")]
            if "finished" in statuses and _running_trial(results, "opt_kill"):
                break
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    time.sleep(1.5)  # the orphaned trial process notices its parent is gone and kills itself
    killed = [json.loads(p.read_text()) for p in results.glob("*/run.json")]
    assert sorted(info["status"] for info in killed) == ["finished", "running"]
    assert main(["sweep", str(path), "--results", str(results), "--quiet"]) == 0
    summary = json.loads((results / "sweeps" / "opt_kill" / "summary.json").read_text())
    assert summary["trials"]["finished"] == 2 and len(summary["parameter_sets"]) == 2
    runs = _runs(results)  # the killed trial resumed in its run directory, nothing else ran
    assert sorted(runs) == sorted(info["tags"]["trial"] for info in killed)
    assert all(json.loads((d / "run.json").read_text())["status"] == "finished" for d in runs.values())


@pytest.mark.codegen_independent
def test_a_trial_killed_beyond_its_retries_is_interrupted_not_failed_and_the_sweep_says_so(
    tmp_path, monkeypatch, capsys
):
    """The executor reports a trial "interrupted" (its process killed twice, or stopped by SIGTERM): it is no
    failure (not in failures.json), the summary counts it, the sweep exits 1 saying a restart resumes it, and
    the restart runs it and exits 0."""
    results, fake = _fake_local_executor(tmp_path, monkeypatch)
    grid = results.parent / "grid.yaml"
    grid.write_text(TINY_GRID.read_text().replace("protocol: ../", f"protocol: {SWEEPS}/../"))
    submit = fake.submit

    def killed_once(spec):
        future = submit(spec)
        if len(fake.calls) == 1:
            result = future.result()
            run_json = results / result["run"] / "run.json"
            run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "status": "interrupted"}))
            future = type(future)()
            future.set_result({**result, "status": "interrupted", "error": "killed by signal 9", "scores": None})
        return future

    monkeypatch.setattr(fake, "submit", killed_once)
    assert main(["sweep", str(grid), "--results", str(results), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "3 of 4 trials finished, 0 failed, 1 interrupted (a restart resumes them)" in captured.out
    assert f"trial {fake.calls[0]} killed by signal 9; a restart resumes it" in captured.err
    assert json.loads((results / "sweeps" / "tiny_grid" / "failures.json").read_text()) == {}
    summary = json.loads((results / "sweeps" / "tiny_grid" / "summary.json").read_text())
    assert summary["trials"] == {"finished": 3, "failed": 0, "interrupted": 1, "planned": 4, "pending": 1}
    assert main(["sweep", str(grid), "--results", str(results), "--quiet"]) == 0
    assert fake.calls[4:] == fake.calls[:1]  # only the interrupted one ran again
    assert "4 of 4 trials finished, 0 failed;" in capsys.readouterr().out
