"""Tests of brian_lcsnn.store: the SQLite index of run directories and the runs/show/delete commands.

The run directories are fakes written with the runner's own file writers (run.json, protocol.yaml,
scores.json, state.npz); no Brian2 simulation.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import logging
import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from brian_lcsnn import store
from brian_lcsnn.protocol import DEFAULTS
from brian_lcsnn.results import RunError, write_json, write_npz, write_text
from brian_lcsnn.store import COLUMNS, INDEX_NAME, RunIndex, list_runs, register

pytestmark = pytest.mark.codegen_independent

A, B, C = "20240101-000000-a-111111", "20240102-000000-b-222222", "20240103-000000-c-333333"  # the runs of `several`


def _scores(patch=0.8, all_=0.7, first=0.75, linear=0.9, n=100):
    def entry(p):
        return {"accuracy": p, "error": float(np.sqrt(p * (1 - p) / n)), "n": n, "no_spike": 2}

    return {"patch_voting": entry(patch), "all_voting": entry(all_), "spikes_first": entry(first),
            "top_5": entry(0.5), "linear": entry(linear)}  # fmt: skip


def make_run(root: Path, run_id: str, *, status="finished", network=None, neuron=None, scores="default",
             train=(100, 200), seed=1, name="lc") -> Path:  # fmt: skip
    """A run directory as runner.run_protocol leaves it (same files, same formats)."""
    protocol = copy.deepcopy(DEFAULTS)
    protocol.update(name=name, seed=seed)
    protocol["dataset"]["path"] = None
    protocol["network"].update(network or {})
    protocol["parameters"]["neuron"].update(neuron or {})
    protocol["phases"] = [{"type": "train", "name": f"train_{k}", "n": n, "sampling": "with_replacement",
                           "learn": ["XY"]} for k, n in enumerate(train)]  # fmt: skip
    protocol["phases"] += [{"type": "lock", "name": "lock", "projection": "XY", "value": None},
                           {"type": "calibrate", "name": "calibrate", "n": 50, "sampling": "ordered"},
                           {"type": "test", "name": "test", "n": 100, "sampling": "ordered"},
                           {"type": "test", "name": "test_1", "n": 100, "sampling": "ordered"}]  # fmt: skip
    run_dir = root / run_id
    write_text(run_dir / "protocol.yaml", yaml.safe_dump(protocol, sort_keys=False))
    phases = [dict(p) if p["type"] == "lock" else {**p, "wall_seconds": 1.5, "simulation_seconds": 1.2,
              "samples_per_second": round(p["n"] / 1.5, 2)} for p in protocol["phases"]]  # fmt: skip
    info = {
        "id": run_id, "name": name, "protocol_file": f"/p/{name}.yaml", "status": status, "seed": seed,
        "device": "cpp_standalone", "float": "float64", "threads": 1,
        "build": {"key": "abc", "directory": "/b/abc", "compiled": True, "prepare_seconds": 3.0},
        "sizes": {"x_neurons": 400, "y_neurons": 225, "locations": 9, "xy_synapses": 32400, "xy_parameters": 32400,
                  "yy_synapses": 1800, "total_parameters": 34200},
        "dataset": {"name": "mnist", "source": "/data/mnist"}, "versions": {"python": "3.11.7", "brian2": "2.9.0"},
        "started": "2024-01-02T03:04:05", "phases": phases,
    }  # fmt: skip
    if status != "running":
        info["finished"] = "2024-01-02T04:04:05"
    write_json(run_dir / "run.json", info)
    if scores == "default":
        scores = {"test": _scores(0.5, 0.5, 0.5, 0.5), "test_1": _scores()}
    if scores is not None:
        write_json(run_dir / "scores.json", scores)
    write_npz(run_dir / "state.npz", xy_w=np.zeros(4), yy_w=np.zeros(2), theta=np.zeros(3))
    return run_dir


def _parser():
    parser = argparse.ArgumentParser(prog="lcsnn")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def call(*argv) -> int:
    args = _parser().parse_args([str(a) for a in argv])
    return args.handler(args)


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "results"
    path.mkdir()
    return path


def test_index_row_columns_and_values(root):
    make_run(root, "20240102-030405-lc-aaaaaa", network={"n_filters": 25, "c_w": -50.5})
    with RunIndex(root) as index:
        index.sync()
        (row,) = index.records()
        frame = index.frame()
    assert (root / INDEX_NAME).is_file()
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 1
    got = frame.iloc[0].to_dict()
    assert row["id"] == got["id"] == "20240102-030405-lc-aaaaaa"
    assert got["status"] == "finished" and got["name"] == "lc" and got["seed"] == 1
    assert got["architecture"] == "LC" and got["n_filters"] == 25 and got["kernel_size"] == 12 and got["stride"] == 4
    assert got["mean_weight"] == 0.4 and got["c_w"] == -50.5 and got["yy_init"] == "constant"
    assert got["yy_pairs"] == "competition" and got["device"] == "cpp_standalone"
    sizes = (got["y_neurons"], got["xy_synapses"], got["yy_synapses"], got["total_parameters"])
    assert sizes == (225, 32400, 1800, 34200)
    assert got["train_samples"] == 300  # train phases only
    assert got["wall_seconds"] == pytest.approx(1.5 * 5)  # every timed phase (lock has none)
    # the last test phase, the best of the three voting methods (not top_5, not linear)
    assert got["best_voting"] == 0.8 and got["best_voting_method"] == "patch_voting"
    assert got["best_voting_error"] == pytest.approx(np.sqrt(0.8 * 0.2 / 100))
    assert got["linear"] == 0.9 and got["test_n"] == 100
    assert got["started"] == "2024-01-02T03:04:05" and got["finished"] == "2024-01-02T04:04:05"
    assert json.loads(got["params_json"])["network"]["c_w"] == -50.5


@pytest.mark.parametrize("accuracies, method", [((0.6, 0.9, 0.7), "all_voting"), ((0.6, 0.7, 0.95), "spikes_first"),
                                                ((0.9, 0.9, 0.9), "patch_voting")])  # fmt: skip
def test_best_voting_is_max_of_voting_methods_in_last_test_phase(root, accuracies, method):
    make_run(root, "r1", scores={"test": _scores(0.99, 0.99, 0.99), "test_1": _scores(*accuracies, linear=0.99)})
    with RunIndex(root) as index:
        index.sync()
        row = index.records()[0]
    assert row["best_voting"] == max(accuracies) and row["best_voting_method"] == method


def test_running_run_without_scores(root):
    make_run(root, "r1", status="running", scores=None)
    with RunIndex(root) as index:
        index.sync()
        (row,) = index.records()
    assert row["status"] == "running" and row["finished"] is None
    assert row["best_voting"] is None and row["linear"] is None and row["test_n"] is None


@pytest.fixture
def several(root):
    make_run(root, A, name="a", network={"n_filters": 25}, neuron={"tau_m": "25 ms"})
    make_run(root, B, name="b", network={"n_filters": 100, "kernel_size": 8, "architecture": "C"},
             scores={"test": _scores(0.6, 0.5, 0.4, 0.7)})  # fmt: skip
    make_run(root, C, name="c", network={"n_filters": 50, "mean_weight": 0.25}, status="failed",
             scores={"test": _scores(0.9, 0.5, 0.4, 0.95)}, neuron={"tau_m": "30 ms"})  # fmt: skip
    index = RunIndex(root)
    index.sync()
    yield index
    index.close()


def test_filters_numeric_string_and_dotted(several):
    def ids(**f):
        return list(several.frame(f)["id"].str[:8])

    assert ids(n_filters="100") == ["20240102"]
    assert ids(n_filters=100.0) == ["20240102"] and ids(mean_weight="0.250") == ["20240103"]  # as numbers
    assert ids(architecture="LC") == ["20240101", "20240103"] and ids(status="failed") == ["20240103"]
    assert ids(**{"parameters.neuron.tau_m": "25 ms"}) == ["20240101"]  # dotted path into the protocol
    assert ids(**{"network.kernel_size": 8}) == ["20240102"] and ids(**{"phases.0.n": "100"}) == ids()
    assert ids(architecture="LC", n_filters=50) == ["20240103"]
    assert ids(n_filters="lots") == []


def test_unknown_filter_or_sort_key_names_it(several):
    with pytest.raises(RunError, match="no_such_key"):
        several.frame({"no_such_key": 1})
    with pytest.raises(RunError, match="parameters.neuron.nope"):
        several.frame({"parameters.neuron.nope": 1})
    with pytest.raises(RunError, match="bogus"):
        several.frame(sort="bogus")


def test_sort(several):
    frame = several.frame(sort="n_filters")
    assert list(frame["n_filters"]) == [25, 50, 100]
    assert list(several.frame(sort="best_voting", descending=True)["best_voting"]) == [0.9, 0.8, 0.6]
    assert list(several.frame(sort="name", descending=True)["id"].str[:8]) == ["20240103", "20240102", "20240101"]
    make_run(several.root, "20240104-x", scores=None)
    several.sync()
    assert several.frame(sort="best_voting", descending=True)["id"].iloc[-1] == "20240104-x"  # no value: last


def test_rebuild_from_directories_gives_the_same_frame(several, root):
    before = several.frame()
    several.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / INDEX_NAME}{suffix}").unlink(missing_ok=True)
    with RunIndex(root) as index:
        assert len(index.frame()) == 0
        assert index.rebuild() == 3
        pd.testing.assert_frame_equal(index.frame(), before)
        assert index.rebuild() == 3 and len(index.frame()) == 3  # again: no duplicates


def test_bad_files_are_reported_and_skipped(root, caplog):
    make_run(root, "good")
    text = (make_run(root, "truncated") / "run.json").read_text()
    (root / "truncated" / "run.json").write_text(text[: len(text) // 2])
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("hello")
    (make_run(root, "badscores") / "scores.json").write_text("<html>not json</html>")
    (make_run(root, "otherjson") / "run.json").write_text('{"hello": "world"}')
    (make_run(root, "badyaml") / "protocol.yaml").write_text("network: [unclosed\n")
    (root / "stray.txt").write_text("x")
    with caplog.at_level(logging.INFO, logger="brian_lcsnn.store"), RunIndex(root) as index:
        assert index.rebuild() == 1
        index.sync()
        assert list(index.frame()["id"]) == ["good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad in ("truncated/run.json", "badscores/scores.json", "otherjson/run.json", "badyaml/protocol.yaml"):
        assert any(bad in w for w in warnings), bad
    assert any("foreign" in r.getMessage() and "no run.json" in r.getMessage() for r in caplog.records)


def test_sync_notices_changes_and_deletions(root):
    make_run(root, "r1", status="running", scores=None)
    make_run(root, "r2")
    with RunIndex(root) as index:
        index.sync()
        assert index.frame().set_index("id").loc["r1", "status"] == "running"
        make_run(root, "r1", status="finished")  # the runner rewrites run.json (and scores.json)
        import shutil

        shutil.rmtree(root / "r2")
        make_run(root, "r3")
        index.sync()
        frame = index.frame().set_index("id")
    assert list(frame.index) == ["r1", "r3"]
    assert frame.loc["r1", "status"] == "finished" and frame.loc["r1", "best_voting"] == 0.8


def test_sync_does_not_reread_unchanged_runs(root, monkeypatch):
    for k in range(5):
        make_run(root, f"r{k}")
    with RunIndex(root) as index:
        index.sync()
        calls = []
        monkeypatch.setattr(store, "_read_row", lambda d: calls.append(d) or None)
        index.sync()
        assert calls == []
        write_json(root / "r3" / "run.json", {**json.loads((root / "r3" / "run.json").read_text()), "status": "x"})
        index.sync()
        assert [p.name for p in calls] == ["r3"]


def test_run_that_becomes_unreadable_drops_out(root):
    make_run(root, "r1")
    with RunIndex(root) as index:
        index.sync()
        (root / "r1" / "run.json").write_text("{")
        index.sync()
        assert len(index.frame()) == 0


def test_damaged_index_is_recreated(root, caplog):
    make_run(root, "r1")
    (root / INDEX_NAME).write_bytes(b"this is not an sqlite database" * 100)
    with RunIndex(root) as index:
        index.sync()
        assert list(index.frame()["id"]) == ["r1"]
    assert "damaged" in caplog.text


def test_foreign_values_are_stored_not_fatal(root):
    run_dir = make_run(root, "odd")
    info = json.loads((run_dir / "run.json").read_text())
    info.update(seed=[1, 2], sizes="unknown", phases=[{"type": "train", "n": "many"}, {"type": "train", "n": 7}])
    write_json(run_dir / "run.json", info)
    write_json(run_dir / "scores.json", {"test": {"patch_voting": {"accuracy": "high"}, "linear": {}}})
    with RunIndex(root) as index:
        index.sync()
        (row,) = index.records()
        assert row["seed"] == "[1, 2]" and row["y_neurons"] is None and row["train_samples"] == 7
        assert row["best_voting"] is None and row["linear"] is None
        assert list(index.frame()["id"]) == ["odd"]


def test_empty_index_and_unwritable_index(root, caplog):
    with RunIndex(root) as index:
        assert list(index.frame().columns) == list(COLUMNS) and len(index.frame({"any.key": 1})) == 0
    (root / INDEX_NAME).unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{root / INDEX_NAME}{suffix}").unlink(missing_ok=True)
    (root / INDEX_NAME).mkdir()  # no database can be opened there: an in-memory index, with a warning
    make_run(root, "r1")
    with RunIndex(root) as index:
        index.sync()
        assert list(index.frame()["id"]) == ["r1"]
    assert "in-memory" in caplog.text


def _sync_worker(job):
    root, names = job
    for name in names:  # each run appears while the other process indexes too
        make_run(Path(root), name)
        with RunIndex(Path(root)) as index:
            index.sync()
    with RunIndex(Path(root)) as index:
        return sum(name in {r["id"] for r in index.records()} for name in names)


def test_two_processes_index_concurrently(root):
    names = [[f"w{w}-run{k:02d}" for k in range(20)] for w in range(2)]
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter each, as two `lcsnn` processes
    with ctx.Pool(2) as pool:
        assert pool.map(_sync_worker, [(str(root), n) for n in names]) == [20, 20]
    with RunIndex(root) as index:
        assert sorted(index.frame()["id"]) == sorted(names[0] + names[1])
    with sqlite3.connect(root / INDEX_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_list_runs(several, root, monkeypatch):
    assert len(list_runs(root)) == 3
    assert list(list_runs(root, n_filters=50)["id"]) == [C]
    monkeypatch.setenv("BRIAN_LCSNN_RESULTS", str(root))
    assert len(list_runs()) == 3
    with pytest.raises(RunError, match="no such results folder"):
        list_runs(root / "missing")


# ---------------------------------------------------------------- commands


def test_runs_lists_100_runs(root, capsys):
    for k in range(100):
        make_run(root, f"20240101-{k:06d}-lc-{k:06x}", network={"n_filters": 25 + k})
    assert call("runs", "--results", root) == 0
    first = capsys.readouterr().out.splitlines()
    assert call("runs", "--results", root) == 0  # the second reads the index
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines == first and len(lines) == 101  # header and 100 runs
    assert lines[0].split() == list(store.DEFAULT_COLUMNS)
    assert "100 run(s)" in out.err
    assert len({len(line) for line in lines[:1] + lines[1:]}) <= 2  # aligned (rstrip may shorten some)


def test_runs_json_csv_columns_filter_sort(several, root, capsys):
    assert call("runs", "--results", root, "--json") == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 3 and set(records[0]) == set(COLUMNS)
    assert records[0]["params_json"]["network"]["n_filters"] == 25
    assert call("runs", "--results", root, "--csv") == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame.columns) == list(COLUMNS) and len(frame) == 3
    assert call("runs", "--results", root, "--csv", "--columns", "id,n_filters", "--sort", "n_filters", "--desc") == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["20240102-000000-b-222222,100", "20240103-000000-c-333333,50",
                                                        "20240101-000000-a-111111,25"]  # fmt: skip
    assert call("runs", "--results", root, "--filter", "parameters.neuron.tau_m=30 ms", "--columns", "id,c_w") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "c_w"] and lines[1].split() == [C, "-100"]
    assert call("runs", "--results", root, "--rebuild", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 3


@pytest.mark.parametrize("argv, match", [(["--filter", "nokey"], "KEY=VALUE"), (["--filter", "bogus=1"], "bogus"),
                                         (["--columns", "id,nope"], "nope"), (["--sort", "nope"], "nope")])  # fmt: skip
def test_runs_bad_input_is_run_error(several, root, argv, match):
    with pytest.raises(RunError, match=match):
        call("runs", "--results", root, *argv)


def test_runs_survives_a_truncated_run_json(several, root, capsys, caplog):
    (root / B / "run.json").write_text('{"id": "20240102-00')
    assert call("runs", "--results", root, "--columns", "id") == 0
    assert capsys.readouterr().out.split() == ["id", A, C]
    assert "20240102-000000-b-222222/run.json" in caplog.text


def test_runs_uses_default_results_root(several, root, monkeypatch, capsys):
    monkeypatch.setenv("BRIAN_LCSNN_RESULTS", str(root))
    assert call("runs", "--columns", "id") == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    monkeypatch.chdir(root)
    monkeypatch.delenv("BRIAN_LCSNN_RESULTS")
    with pytest.raises(RunError, match="no such results folder"):
        call("runs")  # ./results does not exist in the results folder itself


def test_show_by_prefix(several, root, capsys):
    assert call("show", "20240103", "--results", root) == 0
    out = capsys.readouterr().out
    assert C in out and "failed" in out
    assert "patch_voting: 0.9000 ± 0.0300 (n=100)" in out
    assert out.splitlines()[-1] == str(root / C)
    assert call("show", "20240101", "--results", root, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["run"]["id"] == A and shown["scores"]["test_1"]["linear"]["accuracy"] == 0.9
    assert shown["path"] == str(root / A)


def test_find_prefix_errors(several):
    assert several.find(B).name == B
    with pytest.raises(RunError, match="ambiguous.*20240101-000000-a-111111.*20240102-000000-b-222222"):
        several.find("2024010")
    with pytest.raises(RunError, match="no run"):
        several.find("1999")
    with pytest.raises(RunError, match="ambiguous"):
        call("show", "2024", "--results", several.root)


def test_delete_with_yes(several, root, capsys):
    assert call("delete", "20240102", "--results", root, "--yes") == 0
    assert not (root / B).exists()
    assert "deleted" in capsys.readouterr().out
    assert B not in list(several.frame()["id"])
    assert len(several.frame()) == 2


class _Stdin(io.StringIO):
    def __init__(self, text, tty):
        super().__init__(text)
        self.tty = tty

    def isatty(self):
        return self.tty


def test_delete_refuses_without_yes_on_non_tty(several, root, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", _Stdin("y\n", tty=False))
    assert call("delete", "20240102", "--results", root) == 1
    assert (root / B).is_dir()
    assert "--yes" in capsys.readouterr().err


@pytest.mark.parametrize("answer, rc", [("y\n", 0), ("n\n", 1), ("\n", 1), ("", 1)])  # "": end of input
def test_delete_asks_on_a_terminal(several, root, monkeypatch, capsys, answer, rc):
    monkeypatch.setattr("sys.stdin", _Stdin(answer, tty=True))
    assert call("delete", "20240103", "--results", root) == rc
    assert "delete " + str(root / C) + "? [y/N]" in capsys.readouterr().out
    assert (root / C).exists() == (rc == 1)


def test_delete_api(several, root):
    with pytest.raises(RunError):
        several.delete("nope")
    with pytest.raises(RunError):
        several.delete("..")
    (root / "notarun").mkdir()
    with pytest.raises(RunError):
        several.delete("notarun")
    assert (root / "notarun").is_dir()
    assert several.delete(A) == root / A
    assert len(several.frame()) == 2
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [B, C, "notarun"]


def test_through_the_cli_main(several, root, monkeypatch, capsys):
    """The CLI's contract: handlers return the exit status; a RunError is one line on stderr and exit 2."""
    from brian_lcsnn import cli

    monkeypatch.setattr(cli, "_command_modules", lambda: [store])
    assert cli.main(["runs", "--results", str(root), "--columns", "id"]) == 0
    assert capsys.readouterr().out.split() == ["id", A, B, C]
    assert cli.main(["runs", "--results", str(root), "--filter", "nope=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown filter key 'nope'") and err.count("\n") == 1
    assert cli.main(["show", "2024", "--results", str(root)]) == 2
    assert "ambiguous" in capsys.readouterr().err


def _tag(run_dir: Path, **tags) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    write_json(run_dir / "run.json", {**info, "tags": tags})


def test_sweep_and_trial_columns_and_runs_sweep(root, capsys):
    _tag(make_run(root, A), sweep="grid", trial="network.c_w=-50 seed=1")
    _tag(make_run(root, B, seed=2), sweep="grid", trial="network.c_w=-50 seed=2")
    _tag(make_run(root, C), sweep="other", trial="seed=1")
    make_run(root, "20240104-000000-d-444444")  # not in a sweep
    with RunIndex(root) as index:
        index.sync()
        rows = {r["id"]: r for r in index.records()}
    assert (rows[A]["sweep"], rows[A]["trial"]) == ("grid", "network.c_w=-50 seed=1")
    assert rows["20240104-000000-d-444444"]["sweep"] is None and rows["20240104-000000-d-444444"]["trial"] is None
    assert call("runs", "--results", root, "--sweep", "grid") == 0
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["id", "name", "status", "seed", "trial"]
    assert [line.split()[0] for line in lines] == [A, B]
    assert "network.c_w=-50 seed=2" in lines[1]
    assert call("runs", "--results", root, "--sweep", "grid", "--filter", "seed=2", "--json") == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [B]


def test_index_of_an_older_schema_is_recreated(root):
    _tag(make_run(root, A), sweep="grid", trial="seed=1")
    db = sqlite3.connect(str(root / INDEX_NAME))
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, signature TEXT)")  # the schema of another version
    db.execute("INSERT INTO runs VALUES ('stale', 'x')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with RunIndex(root) as index:
        index.sync()
        rows = index.records()
    assert [(r["id"], r["sweep"]) for r in rows] == [(A, "grid")]


def test_runs_lists_a_killed_run_as_interrupted(root, capsys):
    from brian_lcsnn.results import running_lock

    make_run(root, "alive", status="running", scores=None)
    make_run(root, "killed", status="running", scores=None)
    (root / "killed" / "run.lock").touch()  # left by a process killed with -9: held by nobody
    with running_lock(root / "alive"):
        assert call("runs", "--results", root, "--json") == 0
    status = {r["id"]: r["status"] for r in json.loads(capsys.readouterr().out)}
    assert status == {"alive": "running", "killed": "interrupted"}
