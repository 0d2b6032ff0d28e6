"""conftest's rule: a collected test without a kind marker stops the session, whatever `-m` selects."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.codegen_independent

TESTS = """import pytest

pytestmark = pytest.mark.runtime  # one kind for the module: enough


def test_marked_by_its_module():
    pass


@pytest.mark.codegen_independent
def test_marked_itself():
    pass
"""


def _collect(folder: Path, *args):
    (folder / "conftest.py").write_text((Path(__file__).parent / "conftest.py").read_text())
    argv = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args, str(folder)]
    return subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=300)


def test_a_test_without_a_kind_marker_stops_the_session(tmp_path):
    (tmp_path / "test_a.py").write_text(TESTS.replace("pytestmark = pytest.mark.runtime", "pytestmark = []"))
    result = _collect(tmp_path, "-m", "codegen_independent")  # the bare test is not even selected
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert "tests without a kind marker" in result.stderr and "test_a.py::test_marked_by_its_module" in result.stderr
    assert "test_marked_itself" not in result.stderr


def test_marked_tests_collect_and_select_by_kind(tmp_path):
    (tmp_path / "test_a.py").write_text(TESTS)
    result = _collect(tmp_path, "-m", "codegen_independent")
    assert result.returncode == 0, result.stderr
    assert "test_a.py::test_marked_itself" in result.stdout and "test_marked_by_its_module" not in result.stdout


@pytest.mark.parametrize("device", ["runtime", "cpp_standalone"])
def test_a_codegen_independent_test_cannot_simulate(device, tmp_path):
    import brian2 as b2

    if device != "runtime":
        b2.set_device(device, build_on_run=False, directory=str(tmp_path))
    group = b2.NeuronGroup(1, "dv/dt = -v / (10*ms) : 1")
    with pytest.raises(AssertionError, match="marked codegen_independent but runs a Brian2 simulation"):
        b2.Network(group).run(1 * b2.ms)
    if device != "runtime":
        with pytest.raises(AssertionError, match="codegen_independent"):
            b2.device.build(directory=str(tmp_path), compile=False, run=False)
