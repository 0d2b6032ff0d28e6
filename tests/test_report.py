"""Tests of brian_lcsnn.report: the HTML report of a real tiny run, opened in headless Chromium, and the live
report of a running run (from its checkpoint)."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from brian_lcsnn import report
from brian_lcsnn.cli import main
from brian_lcsnn.figures import FIGURES
from brian_lcsnn.results import read_json, running_lock, write_json, write_npz

pytestmark = [pytest.mark.standalone, pytest.mark.network]

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
#: Injected before </body>: after the page loaded, writes how many images there are and how many decoded.
CHECK = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images), ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var out = document.createElement("pre"); out.id = "check";
  out.textContent = "IMAGES " + imgs.length + " LOADED " + ok.length; document.body.appendChild(out);
});</script>"""


def _images_in_chromium(page, tmp_path) -> tuple[int, int]:
    """(images, images loaded) of an HTML file as headless Chromium renders it."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
            checked.as_uri()]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    found = re.search(r"IMAGES (\d+) LOADED (\d+)", done.stdout)
    assert found, f"no check result from chromium (exit {done.returncode}): {done.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def test_report_of_a_finished_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    page = out.read_text()
    info, scores = read_json(tiny_run / "run.json"), read_json(tiny_run / "scores.json")
    assert info["id"] in page and "finished" in page and "http-equiv" not in page
    for phase, methods in scores.items():  # every readout of every test phase, with its error
        for method, s in methods.items():
            row = f"<td>{method}</td><td class=num>{s['accuracy']:.4f}</td><td class=num>{s['error']:.4f}</td>"
            assert row in page, (phase, method)
    for p in info["phases"]:  # per-phase timings
        assert f"<td class=num>{p['samples_per_second']:,.1f}</td>" in page
    assert f"{info['build']['prepare_seconds']}" in page and f"{info['sizes']['total_parameters']:,}" in page
    assert "<b>neuron</b>" in page and "tau_m" in page and "refractory_steps" in page  # models with their values
    figures = re.findall(r'<img data-figure="(\w+)" alt="\w+" src="data:image/png;base64,', page)
    assert set(figures) <= set(FIGURES) and len(figures) == len(set(figures)) == page.count("<img")
    # a run with a learning curve, a showcase and a fixed competition: every figure but the YY ones
    assert set(FIGURES) - set(figures) <= {"weights_yy", "competition_histogram"}
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)  # stands alone


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_report_opens_in_headless_chromium_with_every_image(tiny_run, tmp_path):
    out = report.write_report(tiny_run, tmp_path / "report.html")
    embedded = len(re.findall(r"<img data-figure=", out.read_text()))
    images, loaded = _images_in_chromium(out, tmp_path)
    assert images == embedded >= len(FIGURES) - 2 and loaded == images


@pytest.fixture
def half_run(tiny_run, tmp_path):
    """The tiny run as it was half-way through training: status running, a checkpoint after the first chunk."""
    run = shutil.copytree(tiny_run, tmp_path / tiny_run.name)
    info = read_json(run / "run.json")
    info.update(status="running", phases=[])
    info.pop("finished", None)
    write_json(run / "run.json", info)
    state = np.load(run / "states" / "train.npz")
    write_npz(run / "checkpoint.npz", xy_w=state["xy_w"], yy_w=state["yy_w"], theta=state["theta"], phase=0,
              chunk=1, counts=np.zeros((0, info["sizes"]["y_neurons"]), dtype=np.uint16))  # fmt: skip
    for rel in ("scores.json", "state.npz", "states", "counts", "readout", "curves", "showcase.npz", "competition"):
        path = run / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return run


@pytest.fixture
def running_run(half_run):
    """The half-way run with its process alive: the run's lock is held (here by this process)."""
    with running_lock(half_run):
        yield half_run


@pytest.fixture
def killed_run(half_run):
    """The half-way run after kill -9: run.json still says running, its lock file is left and held by nobody."""
    (half_run / "run.lock").touch()
    return half_run


def test_live_report_of_a_running_run(running_run):
    page = report.report_html(running_run, refresh=5)
    assert '<meta http-equiv="refresh" content="5">' in page and "running" in page
    # 100 of the 200 training samples (one chunk of 100); 400 samples in all phases
    assert "In phase 1: train (train), 100 of 200 samples; 100 of 400 samples in all" in page
    assert '<progress value="100" max="400">' in page and "No test phase has finished yet" in page
    drawn = set(re.findall(r'<img data-figure="(\w+)"', page))
    assert {"weights_xy", "theta"} <= drawn  # from the checkpoint: the run has no state.npz yet
    assert "votes" not in drawn and "confusion" not in drawn


def test_watch_refreshes_until_the_run_stops(running_run):
    seen = []

    def fake_sleep(seconds):  # the run finishes while the watcher sleeps
        seen.append((seconds, (running_run / "report.html").read_text()))
        info = read_json(running_run / "run.json")
        write_json(running_run / "run.json", {**info, "status": "interrupted"})

    path = report.watch(running_run, seconds=3, sleep=fake_sleep)
    assert len(seen) == 1 and seen[0][0] == 3 and 'http-equiv="refresh" content="3"' in seen[0][1]
    final = path.read_text()
    assert path == running_run / "report.html" and "http-equiv" not in final and "interrupted" in final
    assert "<h2>Progress</h2>" not in final


def test_watch_stops_at_once_when_the_run_was_killed(killed_run):
    def no_sleep(seconds):
        raise AssertionError("a killed run is not watched")

    final = report.watch(killed_run, seconds=3, sleep=no_sleep).read_text()
    assert "http-equiv" not in final and '<span class="status interrupted">interrupted</span>' in final
    assert f"lcsnn resume {killed_run.name}" in final


def test_report_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert main(["report", "nope", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'nope'" in err[0]
