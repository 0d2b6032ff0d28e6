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

from .errors import LcsnnError

__all__ = [
    "RunError",
    "default_results_root",
    "new_run_dir",
    "write_bytes",
    "write_json",
    "write_npz",
    "write_text",
    "read_json",
    "read_run_file",
    "read_npz",
    "run_status",
    "check_results_root",
    "running_lock",
    "is_running",
]


class RunError(LcsnnError, ValueError):
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


def read_run_file(path: Path, what: type = dict):
    """A JSON file of a run directory (run.json, scores.json, curves/...): the one reader of every command that
    shows a stored run. A missing, truncated or garbled file, or one that is not a ``what``, is a `RunError`
    naming the file."""
    path = Path(path)
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = getattr(err, "strerror", None) or " ".join(str(err).split())
        raise RunError(f"{path}: cannot be read ({type(err).__name__}: {reason})") from None
    if not isinstance(data, what):
        raise RunError(f"{path}: cannot be read (expected a JSON {what.__name__}, got {type(data).__name__})")
    return data


def read_npz(path: Path, keys=None) -> dict:
    """The arrays of a run's ``.npz`` file (never unpickled): a missing, garbled or object-array file, or one
    without one of ``keys``, is a `RunError` naming the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in keys or () if key not in data.files]
            if missing:
                raise RunError(f"{path}: cannot be read (no array {', '.join(missing)})")
            return {key: data[key] for key in data.files}
    except RunError:
        raise
    except Exception as err:  # zipfile, numpy and OS errors of a damaged file: one line naming it
        reason = " ".join(str(err).split())
        if "allow_pickle" in reason:
            reason = "it holds Python objects, which are never unpickled"
        raise RunError(f"{path}: cannot be read ({type(err).__name__}: {reason})") from None


def run_status(run_dir: Path, info: dict) -> str:
    """The status of a run everywhere (runs, show, report): run.json's, except that a run.json saying
    ``running`` whose lock no live process holds belongs to a killed process: ``interrupted``."""
    status = str(info.get("status", "unknown"))
    if status == "running" and not is_running(run_dir):
        return "interrupted"
    return status


def check_results_root(root: Path) -> Path:
    """Check, before anything is compiled, that runs can be written under ``root`` (created later if missing):
    it, or the nearest folder above it that exists, is a writable folder. `RunError` naming it otherwise."""
    root = Path(root)
    existing = root
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "a file" if existing == root else f"{existing} is a file"
        raise RunError(f"{root}: results folder cannot be used ({what}, not a folder)")
    try:  # os.access says yes to root on a read-only mount: try it
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".lcsnn-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise RunError(f"{root}: results folder cannot be written ({err.strerror or err})") from None
    return root


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
