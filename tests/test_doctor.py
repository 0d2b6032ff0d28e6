"""Tests of brian_lcsnn.doctor (fast: the real C++ build is monkeypatched away)."""

from __future__ import annotations

import pytest

from brian_lcsnn import doctor
from brian_lcsnn.doctor import Check, format_line, numpy_rule, run_doctor

pytestmark = pytest.mark.codegen_independent

NAMES = [
    "python",
    "brian2 / numpy",
    "C++ compiler",
    "python packages",
    "C++ standalone build",
    "CUDA nvcc",
    "CUDA GPU",
    "brian2cuda",
    "MNIST cache",
]


@pytest.fixture
def no_build(monkeypatch):
    monkeypatch.setattr(doctor, "_check_build", lambda: Check("C++ standalone build", True, "stub"))


def test_checks_names_and_types(no_build):
    results = doctor.checks()
    assert [c.name for c in results] == NAMES
    assert all(isinstance(c, Check) and c.ok in (True, False, None) for c in results)
    assert all(not c.required for c in results[5:])  # CUDA and MNIST are optional


def test_missing_module_fails_with_fix():
    c = doctor._check_packages((("yaml", "pyyaml"), ("no_such_module_xyz", "no-such-dist")))
    assert c.ok is False and "no-such-dist" in c.detail and "pip install -e ." in c.fix


@pytest.mark.parametrize(
    "b2, np_, ok",
    [
        ("2.9.0", "2.4.0", False),
        ("2.9.0", "2.4.0rc1", False),
        ("2.9.0", "2.3.5", True),
        ("2.10.1", "2.4.1", True),
        ("2.9.0", "3.0.0", False),
    ],
)
def test_numpy_rule(b2, np_, ok):
    c = numpy_rule(b2, np_)
    assert c.ok is ok
    assert ("numpy<2.4" in c.fix) is (not ok)


def test_exception_becomes_fail(monkeypatch, no_build):
    def boom():
        raise OSError("disk on fire")

    monkeypatch.setattr(doctor, "_check_compiler", boom)
    c = {c.name: c for c in doctor.checks()}["C++ compiler"]
    assert c.ok is False and "disk on fire" in c.detail


def test_missing_compiler(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(doctor.shutil, "which", lambda name: None)
    c = doctor._check_compiler()
    assert c.ok is False and "g++" in c.fix


def test_run_doctor_exit_codes(monkeypatch, capsys):
    good = [
        Check("a", True, "fine"),
        Check("cuda", None, "absent", "install it", required=False),
        Check("gpu", False, "old", "new gpu", required=False),
    ]
    monkeypatch.setattr(doctor, "checks", lambda: good)
    assert run_doctor() == 0
    monkeypatch.setattr(doctor, "checks", lambda: good + [Check("compiler", False, "none", "get g++")])
    assert run_doctor() == 1
    out = capsys.readouterr().out
    assert "[FAIL] compiler" in out and "fix: get g++" in out and "[ -- ] cuda" in out


def test_format_line_alignment():
    a = format_line(Check("x", True, "d1", "unused"), width=6)
    b = format_line(Check("longer", None, "d2", "do it"), width=6)
    assert a.index("d1") == b.index("d2") and "fix" not in a and b.endswith("fix: do it")
