"""Atomic result files: complete or absent, and readable like any file the user writes."""

import os
import stat

import pytest

from brian_lcsnn.results import RunError, _atomic, is_running, read_json, running_lock, write_bytes, write_json

pytestmark = pytest.mark.codegen_independent


def test_written_files_have_the_umask_mode_not_mkstemps(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    write_json(tmp_path / "a" / "run.json", {"x": 1})
    write_bytes(tmp_path / "fig.png", b"\x89PNG")
    for path in (tmp_path / "a" / "run.json", tmp_path / "fig.png"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # e.g. 0644, not mkstemp's 0600
    assert read_json(tmp_path / "a" / "run.json") == {"x": 1}
    assert (tmp_path / "fig.png").read_bytes() == b"\x89PNG"
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_leaves_nothing(tmp_path):
    def fails_halfway(handle):
        handle.write(b"half")
        raise OSError("disk full")

    (tmp_path / "scores.json").write_text("old\n")
    with pytest.raises(OSError, match="disk full"):
        _atomic(tmp_path / "scores.json", fails_halfway)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
    assert (tmp_path / "scores.json").read_text() == "old\n"  # the old file is untouched


def test_running_lock_is_freed_when_its_process_is_killed(tmp_path):
    import signal
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from brian_lcsnn.results import running_lock\n"
                               f"with running_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert is_running(tmp_path)
        with pytest.raises(RunError, match="is being run by another process"), running_lock(tmp_path):
            pass
        assert (tmp_path / "run.lock").exists()  # the failed attempt left the holder's file alone
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "run.lock").exists() and not is_running(tmp_path)  # left behind, held by nobody
    with running_lock(tmp_path):
        assert is_running(tmp_path)
    assert not (tmp_path / "run.lock").exists() and not is_running(tmp_path)


def test_a_run_being_run_is_not_resumed_by_a_second_process(tmp_path, capsys):
    from brian_lcsnn.cli import main

    run = tmp_path / "results" / "20261130-000000-x-000000"
    run.mkdir(parents=True)
    write_json(run / "run.json", {"id": run.name, "status": "running"})
    with running_lock(run):
        assert main(["resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is being run by another process" in err[0]
