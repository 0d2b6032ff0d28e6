"""What run.json records about the build, checked without simulating (the run's steps are stubbed)."""

import json
from types import SimpleNamespace

import pytest

from brian_lcsnn import checks, runner
from brian_lcsnn.protocol import load_protocol

from .conftest import TINY_RUN, TINY_RUN_OVERRIDES

FIXES = {"std": "c++17", "curand_include": "/wheel/nvidia/curand/include", "curand_library": "/wheel/libcurand.so.10"}


@pytest.mark.codegen_independent
@pytest.mark.parametrize("fixes", [FIXES, None])
def test_run_json_records_the_cuda_fixes_of_the_build(tmp_path, monkeypatch, fixes):
    sim = SimpleNamespace(device_name="cuda_standalone" if fixes else "cpp_standalone", float_dtype="float64",
                          threads=1, key="k", build_dir=tmp_path / "builds" / "k", compiled_now=True,
                          cuda_fixes=fixes)  # fmt: skip
    dataset = SimpleNamespace(name="mnist", source="stub")
    monkeypatch.setattr(runner, "_prepare", lambda *args, **kwargs: (dataset, sim, 12.3456))
    monkeypatch.setattr(runner, "_check_split_sizes", lambda protocol, dataset: None)
    monkeypatch.setattr(checks, "check_protocol", lambda protocol: None)  # builds the equations: a simulation
    monkeypatch.setattr(runner, "_execute", lambda protocol, run_dir, *args, **kwargs: run_dir)
    run_dir = runner.run_protocol(load_protocol(TINY_RUN, TINY_RUN_OVERRIDES), tmp_path / "results", progress=False)
    build = json.loads((run_dir / "run.json").read_text())["build"]
    assert build["key"] == "k" and build["compiled"] is True and build["prepare_seconds"] == 12.346
    assert build.get("cuda_fixes") == fixes
