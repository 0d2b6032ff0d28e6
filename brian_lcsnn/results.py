"""The run directory: every file of a run, written atomically, without pickle.

Layout of ``<results>/<run id>/``::

    protocol.yaml        the resolved protocol (defaults and --set overrides filled in)
    run.json             id, status, seed, versions, device, sizes, per-phase timings
    run.lock             locked by the process running the run (see `running_lock`); removed when it ends
    scores.json          {test phase: {method: {"accuracy", "error", "n", "no_spike"}}}
    state.npz            the final learned state: XY weights with their (pre, post) indices, YY, theta
    states/<phase>.npz   the state after each phase
    counts/<phase>.npz   per-sample Y spike counts of evaluation phases, with labels and image indices
    readout/votes.npz, readout/linear.npz   the calibrated readouts
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = [
    "RunError",
    "default_results_root",
    "new_run_dir",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
    "read_json",
    "running_lock",
    "is_running",
]


class RunError(ValueError):
    """A run or results folder that cannot be used as asked (unknown run id, ...); one line for the user."""


def default_results_root() -> Path:
    """``$BRIAN_LCSNN_RESULTS`` if set, else ``results/`` in the current directory."""
    return Path(os.environ.get("BRIAN_LCSNN_RESULTS", "results"))


def new_run_dir(root: Path, name: str) -> Path:
    """Create a fresh, uniquely named run directory ``<date>-<time>-<name>-<random>``."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
    while True:
        path = root / f"{stamp}-{safe}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


@contextmanager
def running_lock(run_dir: Path):
    """Hold ``run_dir/run.lock`` while this process runs the run. The kernel frees the lock when the process
    ends however it ends (kill -9 too), so a run.json that says ``running`` next to a free lock belongs to a
    process that is gone; a second process cannot run or resume the same run at the same time."""
    path = Path(run_dir) / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir}: is being run by another process") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still locked here: no other process holds this file
    finally:
        os.close(fd)


def is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run's `running_lock`."""
    try:
        fd = os.open(Path(run_dir) / "run.lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's are owner-only: results are meant to be shared)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), _FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    _atomic(Path(path), lambda h: h.write(data))


def write_text(path: Path, text: str) -> None:
    _atomic(Path(path), lambda h: h.write(text.encode()))


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def write_npz(path: Path, **arrays) -> None:
    _atomic(Path(path), lambda h: np.savez_compressed(h, **arrays))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
