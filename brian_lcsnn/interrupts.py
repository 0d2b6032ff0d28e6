"""SIGINT and SIGTERM during a run: stop at once, mark the run ``interrupted``, exit 130 or 143.

Brian2 turns a Ctrl-C during a simulation into a request to stop at the next time step, and a C++ standalone
binary that receives it ends the chunk early and exits 0: a partial chunk would be counted as done. While a
run executes (`interruptible`), our own handlers replace Brian2's: the first SIGINT or SIGTERM raises
`RunInterrupted` at once (a compiled binary that is running is killed by ``subprocess`` and its unfinished
chunk dropped: the checkpoint is written only after a complete chunk, so a resumed run redoes it); later
signals are recorded and ignored, so the bookkeeping that follows (run.json says ``interrupted``) is never cut
short. `deferred` sections (creating the run directory, writing the final run.json) hold a first signal back
until they end.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RunInterrupted", "interruptible", "deferred", "hold", "release", "ignore_from_now_on"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal: ``signum``, ``exit_code`` (128 + signum: 130 for SIGINT, 143 for SIGTERM)
    and the ``run_dir`` it leaves (None when it stopped before its run directory existed)."""

    def __init__(self, signum: int, run_dir: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.run_dir = run_dir

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class _Handler:
    def __init__(self):
        self.received: list[int] = []  # every signal, in order
        self.raised = False
        self.deferring = 0

    def __call__(self, signum, frame):
        self.received.append(signum)
        if not self.raised and not self.deferring:
            self.raised = True
            raise RunInterrupted(signum)

    def release(self) -> None:
        """Raise a signal that came during a deferred section, once the section is over."""
        if self.received and not self.raised and not self.deferring:
            self.raised = True
            raise RunInterrupted(self.received[0])


_active: _Handler | None = None
_ignoring = False


def ignore_from_now_on() -> None:
    """SIGINT and SIGTERM are ignored for the rest of the process (a command line that is about to exit after
    an interrupt: a second Ctrl-C must not turn its last line into a traceback)."""
    global _ignoring
    _ignoring = True
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def interruptible():
    """Install the handlers for the duration of a run (re-entrant; a no-op outside the main thread, where
    Python cannot handle signals); the previous handlers, Brian2's included, come back afterwards."""
    global _active
    if _active is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _Handler()
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _active = handler
    try:
        for s in SIGNALS:
            signal.signal(s, handler)
        yield
    finally:
        if not _ignoring:
            for s in SIGNALS:
                signal.signal(s, previous[s])
        _active = None
        if handler.raised:
            _reset_brian2()


def hold() -> None:
    """Start a section that a first signal does not cut (`release` ends it); see `deferred`."""
    if _active is not None:
        _active.deferring += 1


def release(drop: bool = False) -> None:
    """End a `hold` section: a signal that came during it is raised now (as `RunInterrupted`), or, with
    ``drop``, recorded and dropped."""
    handler = _active
    if handler is None:
        return
    handler.deferring -= 1
    if drop and not handler.raised:
        handler.raised = bool(handler.received)
    handler.release()


@contextmanager
def deferred(raise_after: bool = True):
    """A section that a first signal does not cut: it is raised (as `RunInterrupted`) when the section ends,
    or, with ``raise_after=False`` (the last bookkeeping of a run that ends anyway), recorded and dropped.
    A section left by an exception raises nothing more."""
    handler = _active
    hold()
    try:
        yield
    except BaseException:
        if handler is not None:
            handler.deferring -= 1
        raise
    release(drop=not raise_after)


def _reset_brian2() -> None:
    """An interrupted standalone run leaves Brian2's "a network is running" flag set (``device.run`` sets and
    clears it around the binary without ``finally``); cleared, so that Brian2's own Ctrl-C handler works again."""
    import sys

    if "brian2" in sys.modules:
        from brian2 import Network

        Network._globally_running = False
        Network._globally_stopped = False
