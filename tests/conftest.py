"""Shared fixtures: one build cache per test session, and a Brian2 device reset after each test."""

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    """Compiled builds shared by the tests of one session (a structure compiles once)."""
    return Path(os.environ.get("BRIAN_LCSNN_TEST_BUILD") or tmp_path_factory.mktemp("builds"))


@pytest.fixture(autouse=True)
def _reset_brian2_device():
    yield
    import sys

    if "brian2" in sys.modules:
        import brian2

        brian2.device.reinit()
        brian2.set_device("runtime")
