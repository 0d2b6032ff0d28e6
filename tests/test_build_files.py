"""The run_args files of a shared build directory outlive every run that reads them, and no longer."""

import pytest

from brian_lcsnn.simulation import _RunArgsInUse

pytestmark = pytest.mark.codegen_independent


def test_run_args_files_are_deleted_by_the_last_run_only(tmp_path):
    arrays = tmp_path / "static_arrays"
    arrays.mkdir()
    shared = arrays / "init_stimulus_values_0123abcd.dat"  # Brian2 names them by content: both runs use it
    build_time = arrays / "_static_array__array_XY__synaptic_pre"  # written by the build: never touched
    for path in (shared, shared.with_suffix(".dat.lock"), build_time):
        path.write_bytes(b"x")
    first, second = _RunArgsInUse(tmp_path), _RunArgsInUse(tmp_path)
    first.release()
    assert shared.exists()  # the second run still reads it
    second.release()
    assert sorted(p.name for p in arrays.iterdir()) == [build_time.name]
