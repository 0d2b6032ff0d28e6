"""Errors that reach the user as one line (the command line turns them into exit code 2).

Every error meant for the user derives from `LcsnnError`; the command line catches that one class. The
classes stay importable where they were defined (``brian_lcsnn.protocol.ProtocolError``, ...) and keep their
old built-in bases (``ValueError``, ...), so code that caught those still works.

Kept free of heavy imports, so that commands that never simulate (``lcsnn runs``) start fast.
"""

__all__ = ["LcsnnError", "DeviceError"]


class LcsnnError(Exception):
    """Base of every error of brian_lcsnn that is a one-line message for the user (exit code 2 on the command
    line): `ProtocolError`, `ModelError`, `DataError`, `DeviceError`, `RunError`, `SweepError`, `GeometryError`."""


class DeviceError(LcsnnError, RuntimeError):
    """A device that cannot be used here (e.g. CUDA without brian2cuda); one line saying what is missing."""
