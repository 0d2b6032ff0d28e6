"""Packaging: the declared dependencies, the licence, the shipped model and protocol files, the recorded commit.

The install itself (a wheel outside the checkout) is tests/test_wheel.py.
"""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from brian_lcsnn.cli import main
from brian_lcsnn.models import models_dir
from brian_lcsnn.protocol import ProtocolError, load_protocol, protocols_dir, resolve_protocol
from brian_lcsnn.runner import _git_checkout, _versions

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: environment.yml's entries that are conda's own, not Python dependencies of the package.
CONDA_ONLY = {"python", "cxx-compiler", "make", "pip"}


def _pins(requirements) -> dict[str, SpecifierSet]:
    pins = {}
    for text in requirements:
        req = Requirement(text)
        assert req.marker is None, f"{text!r}: a python_version marker cannot be written in environment.yml"
        pins[canonicalize_name(req.name)] = req.specifier
    return pins


@pytest.mark.codegen_independent
def test_environment_yml_and_pyproject_agree_on_every_dependency_and_pin():
    declared = _pins(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"])
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_names = [entry for entry in conda if isinstance(entry, str)]
    python = [Requirement(entry).specifier for entry in conda_names if Requirement(entry).name == "python"]
    assert python == [SpecifierSet(PYPROJECT["project"]["requires-python"])]
    assert _pins(e for e in conda_names if Requirement(e).name not in CONDA_ONLY) == declared
    assert declared["numpy"] == SpecifierSet(">=1.24,<2.4")  # brian2 2.9 does not import with numpy 2.4


@pytest.mark.codegen_independent
def test_the_declared_mit_licence_is_shipped():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the brian-lcsnn developers" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


@pytest.mark.codegen_independent
def test_every_model_and_protocol_file_is_package_data_read_from_the_checkout():
    setuptools = PYPROJECT["tool"]["setuptools"]
    for package, folder in (("brian_lcsnn.model_files", "models"), ("brian_lcsnn.protocol_files", "protocols")):
        assert package in setuptools["packages"] and setuptools["package-dir"][package] == folder
        files = {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.y*ml")}
        assert files, folder
        patterns = setuptools["package-data"][package]  # setuptools globs them, "**" recursive
        shipped = {p.relative_to(ROOT / folder).as_posix() for pat in patterns for p in (ROOT / folder).glob(pat)}
        assert shipped == files, f"{folder}: not in the wheel: {sorted(files - shipped)}"
    # the editable install reads the checkout's folders: an edit to models/*.yaml is seen at once
    assert models_dir() == ROOT / "models" and protocols_dir() == ROOT / "protocols"


@pytest.mark.runtime  # lcsnn check builds the equations on the runtime device
def test_a_protocol_name_is_a_shipped_protocol_and_an_existing_file_wins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the checkout
    assert resolve_protocol("quickstart") == ROOT / "protocols" / "quickstart.yaml"
    assert resolve_protocol("thesis/lc100_k12") == ROOT / "protocols" / "thesis" / "lc100_k12.yaml"
    assert load_protocol("thesis/lc100_k12").path == ROOT / "protocols" / "thesis" / "lc100_k12.yaml"
    assert main(["check", "quickstart"]) == 0
    assert capsys.readouterr().out.strip() == f"{ROOT / 'protocols' / 'quickstart.yaml'}: ok (3 phases)"

    (tmp_path / "quickstart").write_text((ROOT / "protocols" / "quickstart.yaml").read_text())
    assert resolve_protocol("quickstart") == Path("quickstart")  # an existing file always wins
    assert load_protocol("quickstart").path == tmp_path / "quickstart"
    assert resolve_protocol("quickstart.yaml") == Path("quickstart.yaml")  # a file name is never a shipped name
    with pytest.raises(ProtocolError, match=r"^quickstart\.yaml: protocol file not found$"):
        load_protocol("quickstart.yaml")
    with pytest.raises(ProtocolError, match=r"^thesis/nothing: protocol file not found \(nor the name of a shipped"):
        load_protocol("thesis/nothing")


def _git(repo: Path, *args: str) -> str:
    identity = ("-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false")
    return subprocess.run(["git", "-C", str(repo), *identity, *args], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


@pytest.mark.codegen_independent
def test_the_git_commit_and_dirty_state_of_a_checkout_are_recorded(tmp_path):
    assert _git_checkout(tmp_path) == (None, None)  # not a checkout: installed from a wheel or an index
    repo = tmp_path / "clone"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "tracked.txt").write_text("a")
    _git(repo, "add", "tracked.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    (repo / "untracked.txt").write_text("not part of the source")
    assert _git_checkout(repo) == (sha, False)
    (repo / "tracked.txt").write_text("b")
    assert _git_checkout(repo) == (sha, True)
    (repo / "inner").mkdir()
    assert _git_checkout(repo / "inner") == (None, None)  # only a checkout's root is the package's own


@pytest.mark.codegen_independent
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="the package does not run from a git checkout here")
def test_versions_name_the_checkouts_commit():
    versions = _versions()
    assert versions["git_commit"] == _git(ROOT, "rev-parse", "HEAD")
    assert isinstance(versions["git_dirty"], bool)


@pytest.mark.standalone
@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="the package does not run from a git checkout here")
def test_run_json_records_the_commit(tiny_run):
    versions = json.loads((tiny_run / "run.json").read_text())["versions"]
    assert versions["git_commit"] == _git(ROOT, "rev-parse", "HEAD")
    assert isinstance(versions["git_dirty"], bool)
