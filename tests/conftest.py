"""Shared fixtures: one build cache per test session, and a Brian2 device reset after each test."""

import os
from pathlib import Path

# Imported before any test: Brian2's console log handler keeps the stderr it finds at import, and one that
# found a test's captured stderr writes "Logging error" into later tests' output once that stream is closed.
import brian2  # noqa: F401 -- imported for its side effect (the log handler), see above
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def build_root(tmp_path_factory):
    """Compiled builds shared by the tests of one session (a structure compiles once)."""
    return Path(os.environ.get("BRIAN_LCSNN_TEST_BUILD") or tmp_path_factory.mktemp("builds"))


#: A real run in seconds (LC 4 filters on MNIST, learning curve and showcase): every file a run writes.
TINY_RUN = FIXTURES / "protocols" / "tiny.yaml"
TINY_RUN_OVERRIDES = ("network.n_filters=4", "simulation.samples_per_chunk=100", "phases.0.n=200",
                      "phases.0.evaluate_every=100", "phases.0.evaluate={calibrate: 100, test: 100}",
                      "phases.1.n=100", "phases.2.n=100", "readout.showcase=2")  # fmt: skip


@pytest.fixture(scope="session")
def tiny_run(build_root, tmp_path_factory):
    """One finished real tiny run, shared by the tests of a session (copy it before changing anything)."""
    from brian_lcsnn.protocol import load_protocol
    from brian_lcsnn.runner import run_protocol

    protocol = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES)
    return run_protocol(protocol, tmp_path_factory.mktemp("tiny_run"), build_root=build_root, progress=False)


@pytest.fixture(autouse=True)
def _reset_brian2_device():
    yield
    import sys

    if "brian2" in sys.modules:
        import brian2

        brian2.device.reinit()
        brian2.set_device("runtime")


#: What a test needs to run; every test names at least one, so `-m codegen_independent` (no Brian2 simulation at
#: all) and `-m "not standalone"` select what they say.
KIND_MARKERS = ("codegen_independent", "runtime", "standalone", "cuda")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked, whatever is selected
def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items if not any(item.get_closest_marker(k) for k in KIND_MARKERS)]
    if unmarked:
        raise pytest.UsageError(f"tests without a kind marker ({', '.join(KIND_MARKERS)}): {', '.join(unmarked)}")


@pytest.fixture(autouse=True)
def _codegen_independent_runs_no_simulation(request, monkeypatch):
    """A `codegen_independent` test that starts a Brian2 run (runtime or standalone) in this process fails."""
    if request.node.get_closest_marker("codegen_independent") is not None:
        from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

        def refuse(*args, **kwargs):
            raise AssertionError(f"{request.node.nodeid} is marked codegen_independent but runs a Brian2 simulation")

        monkeypatch.setattr(brian2.Network, "run", refuse)
        monkeypatch.setattr(CPPStandaloneDevice, "build", refuse)
    yield
