"""Every bad input in one table: the command exits 2 with one line on stderr starting with the expected words,
no traceback, no new run directory, and no Brian2 debug file (brian_debug_*.log, brian_script_*.py) left in
the temporary folder. Each case runs ``python -m brian_lcsnn`` in a fresh process with TMPDIR in the test's
folder, as a user's shell would."""

import fcntl
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import FIXTURES

pytestmark = [pytest.mark.standalone, pytest.mark.network]  # a compiled tiny run of MNIST for the stored-run cases

TINY = FIXTURES / "protocols" / "tiny.yaml"
MODELS = FIXTURES / "models"


def _write_idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    path.write_bytes(gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes(), 1))


def _idx_folder(folder: Path, size: int = 28, bad_label: int | None = None) -> Path:
    """A folder of the four IDX files: 10,100 training images (the last 10,000 are the calibration split)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 10100), ("t10k", 600)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        if bad_label is not None and stem == "t10k":
            labels[7] = bad_label
        _write_idx(folder / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, size, size), dtype=np.uint8))
        _write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", labels)
    return folder


class Context:
    """A case's folders: ``tmp`` (the test folder), ``results`` (an existing results folder), ``cwd``."""

    def __init__(self, tmp: Path, run_source: Path | None):
        self.tmp, self.results, self.cwd = tmp, tmp / "results", tmp / "cwd"
        self.results.mkdir()
        self.cwd.mkdir()
        self.env = {}
        self._run_source = run_source
        self.locks = []

    def protocol(self, text: str, name: str = "p.yaml") -> str:
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def run(self, damage=None) -> Path:
        """A copy of the session's finished tiny run in the results folder, optionally damaged."""
        target = self.results / self._run_source.name
        shutil.copytree(self._run_source, target)
        if damage:
            damage(target)
        return target


def _truncate(name):
    def damage(run):
        text = (run / name).read_text()
        (run / name).write_text(text[: len(text) // 2])

    return damage


def _garbage(name):
    return lambda run: (run / name).write_bytes(b"PK\x03\x04 not a zip file at all")


def _object_array(name):
    return lambda run: np.savez(run / name, counts=np.array([{"a": 1}, None], dtype=object))


def _hold_lock(ctx, run):
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    ctx.locks.append(fd)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))


def _tiny(ctx, *sets, command="check", extra=()):
    argv = [command, str(TINY), *[a for s in sets for a in ("--set", s)], *extra]
    return argv + (["--results", str(ctx.results)] if command == "run" else [])


def _broken_equation(ctx):
    text = (
        (MODELS / "broken_neuron.yaml")
        .read_text()
        .replace("dv/dt = (v_rest - v) / tau_m", "dv/dt = (v_rest - v / tau_m")
    )
    path = ctx.tmp / "unbalanced.yaml"
    path.write_text(text)
    return path


#: name -> (function(ctx) -> argv, the expected start of the line after "error: ", formatted with the ctx's
#: folders: {tmp}, {results}, {tiny} (the tiny protocol), {models} (the fixture models), {run} (the run copy)).
CASES = {
    # ---- protocols: already handled before this table
    "unknown key": (lambda c: _tiny(c, "network.n_filter=3"), "{tiny}: network.n_filter: unknown key"),
    "unknown key (run)": (lambda c: _tiny(c, "network.n_filter=3", command="run"), "{tiny}: network.n_filter: unknown"),
    "wrong type": (lambda c: _tiny(c, "seed=abc"), "{tiny}: seed: expected an integer, got 'abc'"),
    "impossible geometry": (lambda c: _tiny(c, "network.kernel_size=30"), "{tiny}: network: kernel_size 30 is larger"),
    "missing model file": (lambda c: _tiny(c, "models.neuron=no_such_model"), "{tiny}: models.neuron: model file"),
    "protocol not found": (lambda c: ["check", str(c.tmp / "nope.yaml")], "{tmp}/nope.yaml: protocol file not found"),
    "not YAML": (lambda c: ["check", c.protocol("name: [x\n")], "{tmp}/p.yaml line 2: not valid YAML"),
    "--set without =": (lambda c: _tiny(c, "seed"), "{tiny}: --set 'seed': expected dotted.key=value"),
    "learn a locked projection": (
        lambda c: [
            "check",
            c.protocol(
                TINY.read_text().replace(
                    "  - {type: train, n: 400}",
                    "  - {type: lock, projection: XY}\n  - {type: train, n: 400, learn: [XY]}",
                )
            ),
        ],
        "{tmp}/p.yaml: phases[1].learn: XY is locked",
    ),  # fmt: skip
    "cuda without brian2cuda": (
        lambda c: _tiny(c, command="run", extra=["--device", "cuda_standalone"]),
        "device cuda_standalone needs brian2cuda",
    ),
    # ---- model equations Brian2 rejects: the model file and its section, on every device and in check
    "equation rejected (cpp run)": (
        lambda c: _tiny(c, f"models.neuron={MODELS / 'broken_neuron.yaml'}", command="run"),
        "{tiny}: the network cannot be built from its model files: {models}/broken_neuron.yaml section 'reset'",
    ),
    "equation rejected (runtime run)": (
        lambda c: _tiny(
            c, f"models.neuron={MODELS / 'broken_neuron.yaml'}", command="run", extra=["--device", "runtime"]
        ),
        "{tiny}: the network cannot be built from its model files: {models}/broken_neuron.yaml section 'reset'",
    ),  # fmt: skip
    "equation rejected (check)": (
        lambda c: _tiny(c, f"models.neuron={MODELS / 'broken_neuron.yaml'}"),
        "{tiny}: the network cannot be built from its model files: {models}/broken_neuron.yaml section 'reset'",
    ),
    "equation that does not parse": (
        lambda c: _tiny(c, f"models.neuron={_broken_equation(c)}", command="run", extra=["--device", "runtime"]),
        "{tiny}: the network cannot be built from its model files: {tmp}/unbalanced.yaml section 'equations'",
    ),
    "no norm_target to set": (
        lambda c: _tiny(c, f"models.normalisation={MODELS / 'normalise_without_target.yaml'}"),
        "{tiny}: the network cannot be built from its model files: {models}/normalise_without_target.yaml section",
    ),
    # ---- unit strings: a number and a unit, nothing else (no arithmetic: this one used to hang)
    "unit power tower": (
        lambda c: _tiny(c, "dataset.intensity=1 Hz^9^9^9"),
        "{tiny}: dataset.intensity: cannot read '1 Hz^9^9^9' as a number with a unit",
    ),
    "unit arithmetic": (
        lambda c: _tiny(c, "parameters.neuron.tau_m=(2+3) ms"),
        "{tiny}: parameters.neuron.tau_m: cannot read '(2+3) ms' as a number with a unit",
    ),
    "unknown unit": (lambda c: _tiny(c, "parameters.neuron.tau_m=20 sin"), "{tiny}: parameters.neuron.tau_m: unknown"),
    # ---- parameter ranges the step semantics need
    "time constant <= 0": (
        lambda c: _tiny(c, "parameters.neuron.tau_m=-20 ms"),
        "{tiny}: parameters.neuron.tau_m: a time constant must be > 0",
    ),
    "refractory_steps 0": (
        lambda c: _tiny(c, "parameters.neuron.refractory_steps=0", command="run"),
        "{tiny}: parameters.neuron.refractory_steps: must be a whole number of steps >= 1",
    ),
    "absurd time_per_sample": (
        lambda c: _tiny(c, "simulation.time_per_sample=1e9 ms"),
        "{tiny}: simulation.time_per_sample: 1e9 ms is longer than",
    ),
    # ---- the data set, against the protocol
    "split too small": (
        lambda c: _tiny(c, "phases.2.n=20000"),
        "{tiny}: phases[2]: 20000 ordered images from the test split of MNIST",
    ),
    "n too large for memory": (
        lambda c: _tiny(c, "phases.2.n=100000000000", "phases.2.sampling=with_replacement", command="run"),
        "{tiny}: phases[2].n: 100,000,000,000 samples need about",
    ),
    "dataset.path missing": (
        lambda c: _tiny(c, f"dataset.path={c.tmp / 'nowhere'}", command="run"),
        "{tiny}: dataset.path: {tmp}/nowhere is not a folder of IDX files",
    ),
    "dataset.path without IDX files": (
        lambda c: (c.tmp.joinpath("empty").mkdir(), _tiny(c, f"dataset.path={c.tmp / 'empty'}"))[1],
        "{tiny}: dataset.path: missing train-images-idx3-ubyte[.gz] in {tmp}/empty",
    ),
    "labels outside 0..9": (
        lambda c: _tiny(c, f"dataset.path={_idx_folder(c.tmp / 'idx', bad_label=12)}", command="run"),
        "{tmp}/idx/t10k-labels-idx1-ubyte.gz: labels must be digits 0..9, label 12 at index 7",
    ),
    "images smaller than the crop": (
        lambda c: _tiny(c, f"dataset.path={_idx_folder(c.tmp / 'idx', size=16)}", command="run"),
        "{tiny}: dataset.crop: 20 is larger than the 16 x 16 images of {tmp}/idx",
    ),
    # ---- the results folder, before anything compiles
    "--results is a file": (
        lambda c: (
            c.tmp.joinpath("file").write_text("x"),
            _tiny(c, command="run") + ["--results", str(c.tmp / "file")],
        )[1],
        "{tmp}/file: results folder cannot be used (a file, not a folder)",
    ),  # fmt: skip
    "--results under a file": (
        lambda c: (
            c.tmp.joinpath("file").write_text("x"),
            _tiny(c, command="run") + ["--results", str(c.tmp / "file" / "sub")],
        )[1],
        "{tmp}/file/sub: results folder cannot be used ({tmp}/file is a file, not a folder)",
    ),  # fmt: skip
    "--results unwritable": (
        lambda c: _tiny(c, command="run") + ["--results", "/proc/lcsnn-results"],
        "/proc/lcsnn-results: results folder cannot be written",
    ),
    # ---- stored runs: unknown, damaged, live
    "show an unknown run": (lambda c: ["show", "nope", "--results", str(c.results)], "no run 'nope' in {results}"),
    "report an unknown run": (lambda c: ["report", "nope", "--results", str(c.results)], "no run 'nope' in {results}"),
    "plot an unknown run": (lambda c: ["plot", "nope", "--results", str(c.results)], "no run 'nope' in {results}"),
    "resume an unknown run": (lambda c: ["resume", "nope", "--results", str(c.results)], "no run 'nope' in {results}"),
    "delete an unknown run": (
        lambda c: ["delete", "nope", "--yes", "--results", str(c.results)],
        "no run 'nope' in {results}",
    ),
    "show: truncated run.json": (
        lambda c: ["show", c.run(_truncate("run.json")).name, "--results", str(c.results)],
        "{run}/run.json: cannot be read (JSONDecodeError",
    ),
    "show: broken scores.json": (
        lambda c: ["show", str(c.run(_truncate("scores.json")))],
        "{run}/scores.json: cannot be read (JSONDecodeError",
    ),
    "report: truncated run.json": (
        lambda c: ["report", str(c.run(_truncate("run.json")))],
        "{run}/run.json: cannot be read (JSONDecodeError",
    ),
    "report: broken scores.json": (
        lambda c: ["report", c.run(_truncate("scores.json")).name[:12], "--results", str(c.results)],
        "{run}/scores.json: cannot be read (JSONDecodeError",
    ),
    "report: garbage npz": (
        lambda c: ["report", str(c.run(_garbage("state.npz")))],
        "{run}/state.npz: cannot be read (BadZipFile",
    ),
    "report: object-array npz": (
        lambda c: ["report", str(c.run(_object_array("counts/test.npz")))],
        "{run}/counts/test.npz: cannot be read (ValueError: it holds Python objects",
    ),
    "plot: truncated run.json": (
        lambda c: ["plot", str(c.run(_truncate("run.json")))],
        "{run}/run.json: cannot be read (JSONDecodeError",
    ),
    "plot: broken scores.json": (
        lambda c: ["plot", str(c.run(_truncate("scores.json")))],
        "{run}/scores.json: cannot be read (JSONDecodeError",
    ),
    "plot: garbage npz": (
        lambda c: ["plot", str(c.run(_garbage("state.npz"))), "--figure", "weights_xy"],
        "{run}/state.npz: cannot be read (BadZipFile",
    ),
    "plot: object-array npz": (
        lambda c: ["plot", str(c.run(_object_array("counts/test.npz"))), "--figure", "confusion"],
        "{run}/counts/test.npz: cannot be read (ValueError: it holds Python objects",
    ),
    "plot every figure: object-array npz": (  # the figures before the one that reads it are not written either
        lambda c: ["plot", str(c.run(_object_array("counts/test.npz")))],
        "{run}/counts/test.npz: cannot be read (ValueError: it holds Python objects",
    ),
    "resume: truncated run.json": (
        lambda c: ["resume", str(c.run(_truncate("run.json")))],
        "{run}: not a readable run directory",
    ),
    "delete a live run": (
        lambda c: (_hold_lock(c, run := c.run()), ["delete", run.name, "--yes", "--results", str(c.results)])[1],
        "{run}: is being run by a live process",
    ),
}


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    return tiny_run


def _lcsnn(ctx: Context, argv: list[str], build_root: Path) -> subprocess.CompletedProcess:
    tmpdir = ctx.tmp / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "BRIAN_LCSNN_BUILD": str(build_root), **ctx.env}
    env.pop("BRIAN_LCSNN_RESULTS", None)
    return subprocess.run([sys.executable, "-m", "brian_lcsnn", *argv], cwd=ctx.cwd, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def _files(folder: Path | None) -> dict:
    return {p: p.stat().st_mtime_ns if p.is_file() else "dir" for p in folder.rglob("*")} if folder else {}


def _dirs(folder: Path) -> set:
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, tmp_path, build_root, request):
    make_argv, expected = CASES[case]
    needs_run = "{run}" in expected or case.startswith("delete a live")
    ctx = Context(tmp_path, request.getfixturevalue("finished_run") if needs_run else None)
    ctx.env["BRIAN_LCSNN_DATA"] = str(tmp_path / "data") if "idx" in case or "labels" in case else ""
    if not ctx.env["BRIAN_LCSNN_DATA"]:
        del ctx.env["BRIAN_LCSNN_DATA"]
    argv = [str(a) for a in make_argv(ctx)]
    run = next((ctx.results / d for d in _dirs(ctx.results)), None)
    before = {folder: _dirs(folder) for folder in (ctx.results, ctx.cwd, ctx.cwd / "results")}
    files = _files(run)
    try:
        proc = _lcsnn(ctx, argv, build_root)
    finally:
        for fd in ctx.locks:
            os.close(fd)
    fields = {"tmp": tmp_path, "results": ctx.results, "tiny": TINY.resolve(), "models": MODELS.resolve(), "run": run}
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: " + expected.format(**fields)), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "report this" not in proc.stderr
    assert {folder: _dirs(folder) for folder in before} == before  # no run directory, none half-written
    assert _files(run) == files  # a stored run is left as it was (no figure or report half-written into it)
    left = [p.name for p in (tmp_path / "tmpdir").iterdir() if p.name.startswith(("brian_debug_", "brian_script_"))]
    assert not left


# ---------------------------------------------------------------- the rules around the table


def test_every_user_error_derives_from_lcsnn_error_and_keeps_its_old_base():
    from brian_lcsnn.data import DataError
    from brian_lcsnn.errors import DeviceError, LcsnnError
    from brian_lcsnn.models import ModelError
    from brian_lcsnn.protocol import ProtocolError
    from brian_lcsnn.results import RunError
    from brian_lcsnn.sweep import SweepError
    from brian_lcsnn.topology import GeometryError

    for cls, old in ((ProtocolError, ValueError), (ModelError, ValueError), (DataError, Exception),
                     (DeviceError, RuntimeError), (RunError, ValueError), (SweepError, RunError),
                     (GeometryError, ValueError)):  # fmt: skip
        assert issubclass(cls, LcsnnError) and issubclass(cls, old), cls


def test_5e_minus_1_is_a_number_in_a_protocol_and_in_set(tmp_path):
    from brian_lcsnn.protocol import load_protocol

    path = tmp_path / "p.yaml"
    path.write_text(TINY.read_text().replace("mean_weight: 0.46", "mean_weight: 5e-1"))
    assert load_protocol(path)["network"]["mean_weight"] == 0.5
    assert load_protocol(TINY, ["network.c_w=-1e2"])["network"]["c_w"] == -100.0


def test_check_passes_the_tiny_protocol_and_builds_nothing(tmp_path, capsys, monkeypatch):
    from brian_lcsnn import simulation
    from brian_lcsnn.cli import main

    monkeypatch.setattr(simulation.Simulator, "prepare", lambda self: pytest.fail("check compiled"))
    assert main(["check", str(TINY)]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok (3 phases)")


def test_dataset_path_is_relative_to_the_protocol_and_stored_absolute(tmp_path, monkeypatch):
    from brian_lcsnn.checks import check_protocol
    from brian_lcsnn.protocol import load_protocol

    folder = tmp_path / "project"
    _idx_folder(folder / "data")
    path = folder / "p.yaml"
    path.write_text(TINY.read_text().replace("dataset: {name: mnist,", "dataset: {path: data,"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    protocol = load_protocol(path, ["phases.2.n=100"])
    assert protocol["dataset"]["path"] == str((folder / "data").resolve())
    check_protocol(protocol)  # the IDX headers and labels are found from another working directory


def test_results_folder_that_does_not_exist_yet_is_fine(tmp_path):
    from brian_lcsnn.results import check_results_root

    assert check_results_root(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # checked, not created


def test_damaged_runs_are_one_run_error_for_load_run(tiny_run, tmp_path):
    from brian_lcsnn.api import load_run
    from brian_lcsnn.results import RunError

    for name, damage in (("run.json", _truncate), ("scores.json", _truncate), ("state.npz", _garbage),
                         ("state.npz", _object_array), ("readout/votes.npz", _garbage)):  # fmt: skip
        run = tmp_path / f"{damage.__name__}-{name.replace('/', '_')}"
        shutil.copytree(tiny_run, run)
        damage(name)(run)
        with pytest.raises(RunError, match=rf"^{run / name}: cannot be read \("):
            load_run(run)


def test_a_killed_run_shows_interrupted_in_show_runs_and_report(tiny_run, tmp_path, capsys):
    from brian_lcsnn.cli import main

    run = tmp_path / "results" / tiny_run.name
    shutil.copytree(tiny_run, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))  # its process was killed: no lock
    assert main(["show", run.name[:10], "--results", str(run.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["status"] == "interrupted"
    assert main(["show", str(run)]) == 0
    assert "    status: interrupted" in capsys.readouterr().out
    assert main(["runs", "--results", str(run.parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"] == "interrupted"


def test_every_command_takes_a_run_by_id_prefix_or_path(tiny_run, tmp_path, capsys):
    from brian_lcsnn.cli import main

    results = tmp_path / "results"
    run = results / tiny_run.name
    shutil.copytree(tiny_run, run)
    for ref in (run.name, run.name[:17], str(run)):
        for argv in (["show", ref], ["report", ref, "--out", str(tmp_path / "r.html")],
                     ["plot", ref, "--figure", "scores"], ["resume", ref, "--quiet"]):  # fmt: skip
            assert main([*argv, "--results", str(results)]) == 0, argv
            assert capsys.readouterr().out.strip().splitlines()[-1].endswith(("r.html", "scores.png", run.name)), argv
    assert main(["delete", run.name[:17], "--yes", "--results", str(results)]) == 0
    assert not run.exists()


def test_show_into_a_closed_pipe_is_quiet(tiny_run, tmp_path, capsys, monkeypatch):
    """``lcsnn show RUN | head -1``: the reader goes away; no BrokenPipeError traceback, the shell's 141."""
    from brian_lcsnn.cli import main

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["show", str(tiny_run)]) == 141
    assert capsys.readouterr().err == ""
