"""Atomic result files: complete or absent, and readable like any file the user writes."""

import os
import stat

import pytest

from brian_lcsnn.results import _atomic, read_json, write_bytes, write_json

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
