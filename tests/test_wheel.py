"""A plain (non-editable) install works: the wheel carries the model files and the shipped protocols.

The test builds the wheel from a copy of the checkout, installs it with its dependencies into a fresh virtual
environment (from the package index, or pip's cache), and from a folder outside the checkout runs
``lcsnn check quickstart`` and a 300-sample ``lcsnn run quickstart`` (train 100, calibrate 100, test 100).
About two minutes: the install and one C++ compile of the quickstart network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = [pytest.mark.wheel, pytest.mark.standalone, pytest.mark.network]

ROOT = Path(__file__).resolve().parent.parent
#: What a wheel is never built from (the working state of a checkout, not its source).
NOT_SOURCE = (".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".cuda_wheels", ".cuda_data")
SIZES = ("--set", "phases.0.n=100", "--set", "phases.1.n=100", "--set", "phases.2.n=100",
         "--set", "simulation.samples_per_chunk=100")  # fmt: skip


def run(cmd, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_a_wheel_installed_outside_the_checkout_runs_the_quickstart(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source], cwd=tmp_path)
    (wheel,) = dist.glob("brian_lcsnn-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    run([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel], cwd=tmp_path)

    outside = tmp_path / "elsewhere"  # no models/ or protocols/ here, and not inside the checkout
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "BRIAN_LCSNN_RESULTS")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", BRIAN_LCSNN_BUILD=str(tmp_path / "builds"))
    lcsnn = bin_dir / "lcsnn"

    checked = run([lcsnn, "check", "quickstart", *SIZES], cwd=outside, env=env)
    shipped = (env_dir / "lib").glob("python3*/site-packages/brian_lcsnn/protocol_files/quickstart.yaml")
    assert checked.stdout.strip() == f"{next(shipped)}: ok (3 phases)"

    results = tmp_path / "results"
    done = run([lcsnn, "run", "quickstart", *SIZES, "--results", results, "--quiet"], cwd=outside, env=env)
    run_dir = Path(done.stdout.strip().splitlines()[-1])
    assert run_dir.parent == results
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished"
    assert info["versions"]["git_commit"] is None and info["versions"]["git_dirty"] is None  # not a checkout
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores, "scores.json is empty"
    assert sorted(p.name for p in (run_dir / "models").iterdir()) == sorted(
        f"{role}.yaml" for role in ("input", "neuron", "xy", "normalisation", "yy")
    )
