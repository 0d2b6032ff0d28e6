"""Errors that reach the user as one line (the command line turns them into exit code 2).

Kept free of heavy imports, so that commands that never simulate (``lcsnn runs``) start fast.
"""

__all__ = ["DeviceError"]


class DeviceError(RuntimeError):
    """A device that cannot be used here (e.g. CUDA without brian2cuda); one line saying what is missing."""
