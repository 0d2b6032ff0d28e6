"""SIGINT and SIGTERM during a real run (LC 4 filters on MNIST, 100 samples a chunk): the process exits 130 or
143, the run says ``interrupted`` everywhere, the printed resume command finishes it, and the result is the
uninterrupted run's, bit for bit."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from brian_lcsnn.cli import main
from brian_lcsnn.interrupts import RunInterrupted, deferred, interruptible

from .conftest import FIXTURES

TINY = FIXTURES / "protocols" / "tiny.yaml"
#: 3 train chunks, 2 calibration chunks, 3 test chunks of a fraction of a second each
ARGV = ["run", str(TINY), "--quiet", "--set", "network.n_filters=4", "--set", "simulation.samples_per_chunk=100",
        "--set", "phases.0.n=300", "--set", "phases.1.n=200", "--set", "phases.2.n=300",
        "--set", "readout.showcase=0"]  # fmt: skip
PHASES = {"train": 0, "test": 2}  # the phase index in the checkpoint


# -- the handlers alone (no simulation) -------------------------------------------------------------------------
@pytest.mark.codegen_independent
def test_first_signal_raises_later_ones_do_not_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as caught, interruptible():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # never reached: the handler raises at once
    assert caught.value.exit_code == 143 and caught.value.run_dir is None
    assert {s: signal.getsignal(s) for s in before} == before

    with interruptible():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except RunInterrupted as err:
            assert err.exit_code == 130
            os.kill(os.getpid(), signal.SIGINT)  # during the cleanup: recorded, not raised
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.codegen_independent
def test_a_deferred_section_finishes_before_the_signal_is_raised():
    done = []
    with pytest.raises(RunInterrupted) as caught, interruptible():
        with deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            done.append("section")
        done.append("after")  # never reached
    assert done == ["section"] and caught.value.exit_code == 130
    with interruptible():  # the last bookkeeping of a run drops a signal: nothing is raised
        with deferred(raise_after=False):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        done.append("dropped")
    assert done[-1] == "dropped"


@pytest.mark.codegen_independent
def test_the_resume_command_names_the_run_as_the_results_folder_finds_it(tmp_path, monkeypatch):
    from brian_lcsnn.cli import _interrupted_line

    monkeypatch.setenv("BRIAN_LCSNN_RESULTS", str(tmp_path / "results"))
    here = tmp_path / "results" / "20260101-000000-tiny-abcdef"
    line = _interrupted_line(RunInterrupted(signal.SIGINT, here), None)
    assert line == f"interrupted: {here}; resume with: lcsnn resume {here.name}"
    elsewhere = tmp_path / "other" / here.name
    line = _interrupted_line(RunInterrupted(signal.SIGTERM, elsewhere), None)
    assert line == f"interrupted: {elsewhere}; resume with: lcsnn resume {elsewhere}"
    line = _interrupted_line(RunInterrupted(signal.SIGTERM, elsewhere), tmp_path / "other")
    assert line == f"interrupted: {elsewhere}; resume with: lcsnn resume {here.name} --results {tmp_path / 'other'}"
    spaced = tmp_path / "my results"
    line = _interrupted_line(RunInterrupted(signal.SIGINT, spaced / here.name), spaced)
    assert shlex.split(line.split("resume with: ")[1]) == ["lcsnn", "resume", here.name, "--results", str(spaced)]


# -- real runs --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(build_root, tmp_path_factory):
    """The uninterrupted run (it also compiles the build the interrupted runs use)."""
    root = tmp_path_factory.mktemp("whole")
    os.environ["BRIAN_LCSNN_BUILD"] = str(build_root)
    try:
        assert main([*ARGV, "--results", str(root)]) == 0
    finally:
        del os.environ["BRIAN_LCSNN_BUILD"]
    (run_dir,) = root.iterdir()
    return run_dir


def _binary_running(pid: int) -> bool:
    """Whether the process has a child (the compiled binary of a chunk) right now."""
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        return False


def _descendants(pid: int) -> set[str]:
    """The command names of a process's descendants."""
    names, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                for child in Path(f"/proc/{p}/task/{task}/children").read_text().split():
                    todo.append(int(child))
                    names.add(Path(f"/proc/{child}/comm").read_text().strip())
        except OSError:
            pass
    return names


def _checkpoint(root: Path):
    for path in root.glob("*/checkpoint.npz"):
        try:
            with np.load(path) as data:
                return path.parent, int(data["phase"]), int(data["chunk"])
        except (OSError, ValueError, KeyError):
            pass  # being replaced right now
    return None, -1, -1


def _interrupt(root: Path, build_root: Path, phase: str, send, after: int = 1, timeout=300):
    """Start the run in a session of its own (a process group, as a terminal's), wait until a chunk of ``phase``
    after its first ``after`` is being simulated, ``send(pid)``; returns (run dir, return code, stderr,
    checkpoint)."""
    env = {**os.environ, "BRIAN_LCSNN_BUILD": str(build_root)}
    proc = subprocess.Popen([sys.executable, "-m", "brian_lcsnn", *ARGV, "--results", str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + timeout
        while True:
            run_dir, at_phase, chunk = _checkpoint(root)
            if at_phase == PHASES[phase] and chunk >= after and _binary_running(proc.pid):
                send(proc.pid)
                break
            assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no chunk to interrupt in time"
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return run_dir, proc.returncode, err, (at_phase, chunk)


def _twice(pid):
    os.killpg(pid, signal.SIGINT)
    time.sleep(0.02)
    os.killpg(pid, signal.SIGINT)


SENDS = {
    "SIGINT to the group": (lambda pid: os.killpg(pid, signal.SIGINT), 130),  # Ctrl-C on a terminal
    "SIGINT twice to the group": (_twice, 130),
    "SIGINT to the process": (lambda pid: os.kill(pid, signal.SIGINT), 130),
    "SIGTERM to the process": (lambda pid: os.kill(pid, signal.SIGTERM), 143),
}
SLOW_SENDS = {"SIGTERM to the group": (lambda pid: os.killpg(pid, signal.SIGTERM), 143)}  # what Slurm sends
SENDS.update(SLOW_SENDS)
#: In the default suite: one Ctrl-C to the group and SIGTERM to the process; the other ways with -m slow
SLOW_SENDS = {*SLOW_SENDS, "SIGINT twice to the group", "SIGINT to the process"}


@pytest.mark.standalone
@pytest.mark.network
@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("how", [pytest.param(h, marks=[pytest.mark.slow] if h in SLOW_SENDS else []) for h in SENDS])
def test_interrupted_run_says_so_and_resumes_to_the_uninterrupted_result(reference, build_root, tmp_path, capsys,
                                                                        monkeypatch, how, phase):  # fmt: skip
    send, code = SENDS[how]
    root = tmp_path / "results"
    run_dir, returncode, err, (at_phase, chunk) = _interrupt(root, build_root, phase, send)
    lines = err.strip().splitlines()
    assert returncode == code, err[-3000:]
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
    assert lines[-1] == f"interrupted: {run_dir}; resume with: lcsnn resume {run_dir.name} --results {root}"
    # the chunk being simulated was dropped: the checkpoint is the one before it
    with np.load(run_dir / "checkpoint.npz") as data:
        assert (int(data["phase"]), int(data["chunk"])) == (at_phase, chunk)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and not (run_dir / "run.lock").exists()

    capsys.readouterr()
    assert main(["runs", "--results", str(root), "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["interrupted"]
    assert main(["show", run_dir.name, "--results", str(root)]) == 0
    assert "    status: interrupted" in capsys.readouterr().out.splitlines()

    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))
    assert main([*shlex.split(lines[-1].split("resume with: lcsnn ")[1]), "--quiet"]) == 0
    assert (run_dir / "scores.json").read_text() == (reference / "scores.json").read_text()
    with np.load(run_dir / "state.npz") as got, np.load(reference / "state.npz") as want:
        for key in ("xy_w", "yy_w", "theta"):
            assert np.array_equal(got[key], want[key]), key
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["resumed"] == 1
    assert not (run_dir / "checkpoint.npz").exists()


@pytest.mark.standalone
@pytest.mark.network
def test_resume_records_the_device_it_resumed_on(reference, build_root, tmp_path, monkeypatch):
    """A run started on the runtime device (only its run.json says so here: the slow test below really runs one
    on it) and resumed with ``--device cpp_standalone`` says cpp_standalone, and lists the resume."""
    root = tmp_path / "results"
    run_dir, returncode, _, _ = _interrupt(root, build_root, "test", lambda pid: os.killpg(pid, signal.SIGKILL))
    assert returncode == -signal.SIGKILL
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "device": "runtime"}))
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))
    assert main(["resume", str(run_dir), "--device", "cpp_standalone", "--quiet"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["device"] == "cpp_standalone"
    assert [r["device"] for r in info["resumes"]] == ["cpp_standalone"]
    assert (run_dir / "scores.json").read_text() == (reference / "scores.json").read_text()


@pytest.mark.slow
@pytest.mark.standalone
@pytest.mark.network
def test_resume_on_another_device_records_it(reference, build_root, tmp_path, monkeypatch):
    root = tmp_path / "results"
    # killed (-9) in the last test chunk, which the resume runs on the runtime device (numpy code, no compile)
    run_dir, returncode, _, _ = _interrupt(root, build_root, "test", lambda pid: os.killpg(pid, signal.SIGKILL),
                                           after=2)  # fmt: skip
    assert returncode == -signal.SIGKILL
    monkeypatch.setenv("BRIAN_LCSNN_BUILD", str(build_root))
    assert main(["resume", str(run_dir), "--device", "runtime", "--quiet"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["device"] == "runtime"
    assert [r["device"] for r in info["resumes"]] == ["runtime"]
    assert info["build"]["key"] != info["resumes"][0]["build"]["key"]  # the first build stays recorded


@pytest.mark.standalone
@pytest.mark.network
def test_a_chunk_the_binary_did_not_complete_is_never_a_result(reference, build_root, tmp_path):
    """A binary that ends early and exits 0 (what Brian2's own Ctrl-C handling does) gives an error, not counts."""
    import brian2 as b2

    from brian_lcsnn.protocol import load_protocol
    from brian_lcsnn.runner import initial_state, make_simulator

    protocol = load_protocol(TINY, ARGV[4::2])  # the --set values
    sim = make_simulator(protocol, build_root=build_root)
    sim.prepare()
    wrapper = tmp_path / "ends_early.sh"
    wrapper.write_text('#!/bin/sh\n./main "$@" || exit $?\necho "0.1 0.5" > "$2"last_run_info.txt\n')
    wrapper.chmod(0o755)
    state = initial_state(protocol, np.random.SeedSequence(0))
    args = dict(seed=1, plastic={"XY": True}, norm_target=1.0)
    rates = np.zeros((10, protocol.geometry.n_inputs))
    sim.run_chunk(rates, np.ones(10), state, **args)  # the real binary: complete
    previous = b2.prefs.devices.cpp_standalone.run_cmd_unix
    b2.prefs.devices.cpp_standalone.run_cmd_unix = str(wrapper)
    try:
        with pytest.raises(RuntimeError, match="stopped before the end of its chunk"):
            sim.run_chunk(rates, np.ones(10), state, **args)
    finally:
        b2.prefs.devices.cpp_standalone.run_cmd_unix = previous


@pytest.mark.slow
@pytest.mark.standalone
@pytest.mark.network
def test_ctrl_c_while_compiling_is_an_interrupt_not_a_bad_model(tmp_path):
    """Ctrl-C while make compiles (a fresh build folder): exit 130 and one line, no run directory, no "cannot be
    built" error; the same build folder then compiles and runs."""
    builds, root = tmp_path / "builds", tmp_path / "results"
    env = {**os.environ, "BRIAN_LCSNN_BUILD": str(builds)}
    argv = [sys.executable, "-m", "brian_lcsnn", *ARGV, "--results", str(root)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not {"make", "cc1plus"} <= _descendants(proc.pid):  # make runs the compiler
            assert proc.poll() is None and time.time() < deadline, "no compilation seen"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last == "interrupted (SIGINT) before the run directory was created: nothing to resume"
    assert "Traceback" not in err and "cannot be built" not in err
    assert not root.exists() or not any(root.iterdir())
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.runtime
@pytest.mark.network
def test_ctrl_c_on_the_runtime_device_stops_the_chunk_instead_of_cutting_it_short(tmp_path):
    """On the runtime device Brian2's own handler would end the chunk at the next step and return normally."""
    root = tmp_path / "results"
    argv = [sys.executable, "-m", "brian_lcsnn", *ARGV, "--device", "runtime", "--set", "phases.0.n=300",
            "--set", "simulation.samples_per_chunk=300", "--results", str(root)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not list(root.glob("*/run.json")):
            assert proc.poll() is None and time.time() < deadline, "the run did not start"
            time.sleep(0.05)
        time.sleep(3.0)  # in the time steps of the only training chunk (about 1 s of code generation, then 10 s)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    (run_dir,) = root.iterdir()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "checkpoint.npz").exists()  # the chunk was not counted
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"interrupted: {run_dir}; resume")
