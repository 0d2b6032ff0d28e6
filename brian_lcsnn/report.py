"""One self-contained HTML page per run: ``lcsnn report RUN [--out FILE] [--watch [SECONDS]]``.

The page (``<run>/report.html`` by default) holds the run's name, status and description, the resolved protocol
(network, models with their parameter values, phases), the sizes, every score of every test phase with its
binomial error, the timings and every figure of `figures.FIGURES` the run has data for, embedded as PNG data
URIs so that the page stands alone (no other file, no network). While a run trains (status ``running``) the page
shows the progress from ``checkpoint.npz`` and draws the state figures (weights, thresholds) from the
checkpoint's state; ``--watch`` rewrites it every SECONDS with a ``<meta http-equiv="refresh">`` so an open
browser follows, and writes the final page when the run stops.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import sys
import time
from pathlib import Path

from . import figures, readout
from .figures import FIGURES, MissingData, StoredRun, load_stored_run
from .results import RunError, read_npz, read_run_file, run_status, write_text
from .topology import competition_pairs, kernel_index, local_pairs

__all__ = ["checkpoint_state", "progress", "register", "render_figures", "report_html", "resolve_run", "watch",
           "write_report"]  # fmt: skip

logger = logging.getLogger(__name__)

SAMPLE_PHASES = ("train", "calibrate", "test")
DPI = 100  # the page's PNGs: sharp on screen, a few hundred kB in all

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 1180px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #cc4c02; padding-bottom: 2px; }
h3 { margin-bottom: 0.3em; } .muted { color: #666; }
table { border-collapse: collapse; margin: 0.4em 0 1em; } th, td { padding: 2px 10px; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #fff7e0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status { display: inline-block; padding: 1px 8px; border-radius: 4px; color: white; background: #662506; }
.status.running { background: #ec7014; } .status.failed, .status.interrupted { background: #b10026; }
progress { width: 320px; height: 14px; vertical-align: middle; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #666; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 3px; }
"""


def resolve_run(run: str | Path, results=None) -> Path:
    """A run directory (a path with a run.json) or a run id / unique id prefix in the results folder."""
    from .store import resolve_run as resolve

    return resolve(run, results)


# ----------------------------------------------------------------------------------------------- data


def checkpoint_state(run: StoredRun) -> dict | None:
    """The state in ``checkpoint.npz`` in the layout of ``state.npz`` (per-synapse XY weights with their
    indices, YY, theta), with the checkpoint's phase index and chunk; None without a checkpoint."""
    path = run.path / "checkpoint.npz"
    if not path.is_file():
        return None
    ck = read_npz(path, ("xy_w", "yy_w", "theta", "phase", "chunk"))
    g = run.geometry
    xy_w = ck["xy_w"][kernel_index(g)] if g.architecture == "C" else ck["xy_w"]  # C: the checkpoint holds kernels
    xy_i, xy_j = local_pairs(g)
    yy_i, yy_j = competition_pairs(g)
    return {"xy_w": xy_w, "xy_i": xy_i, "xy_j": xy_j, "yy_w": ck["yy_w"], "yy_i": yy_i, "yy_j": yy_j,
            "theta": ck["theta"], "phase": int(ck["phase"]), "chunk": int(ck["chunk"]),
            "mtime": path.stat().st_mtime}  # fmt: skip


def progress(run: StoredRun, checkpoint: dict | None) -> dict | None:
    """Where a running run is: its current phase, samples done in it and over every sample phase."""
    phases = run.protocol.get("phases", [])
    if run.info.get("status") != "running":
        return None
    done_phases = checkpoint["phase"] if checkpoint else len(run.info.get("phases", []))
    chunk = checkpoint["chunk"] if checkpoint else 0
    per_chunk = int(run.protocol.get("simulation", {}).get("samples_per_chunk", 1000))
    total = sum(int(p.get("n", 0)) for p in phases if p.get("type") in SAMPLE_PHASES)
    done = sum(int(p.get("n", 0)) for p in phases[:done_phases] if p.get("type") in SAMPLE_PHASES)
    current = phases[done_phases] if done_phases < len(phases) else None
    in_phase = 0
    if current is not None and current.get("type") in SAMPLE_PHASES:
        in_phase = min(chunk * per_chunk, int(current["n"]))
    return {"phase_index": done_phases, "phase": current, "in_phase": in_phase, "done": done + in_phase,
            "total": total, "checkpoint_age": time.time() - checkpoint["mtime"] if checkpoint else None}  # fmt: skip


def render_figures(run: StoredRun) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every figure of `figures.FIGURES` as PNG bytes, drawn in memory; and the skipped ones with the reason."""
    from matplotlib.figure import Figure

    drawn, skipped = {}, {}
    for name, draw in FIGURES.items():
        with figures._style():
            fig = Figure()
            try:
                draw(run, fig)
            except MissingData as why:
                skipped[name] = str(why)
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI)
        drawn[name] = buf.getvalue()
    return drawn, skipped


def _models(run: StoredRun) -> dict[str, tuple[str, dict, set]]:
    """Per role: the model file's first comment line, its parameters with the protocol's overrides, which were
    overridden. The run directory's copies of the model files are read (``models/<role>.yaml``)."""
    from .models import read_yaml

    out = {}
    overrides = run.protocol.get("parameters") or {}
    for role, ref in (run.protocol.get("models") or {}).items():
        path = run.path / str(ref)
        if not path.is_file():
            out[role] = (f"{ref} (file not in the run directory)", dict(overrides.get(role) or {}), set())
            continue
        model = read_yaml(path, RunError) or {}
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        params = {**(model.get("parameters") or {}), **(overrides.get(role) or {})}
        out[role] = (first or str(ref), params, set(overrides.get(role) or {}))
    return out


# ----------------------------------------------------------------------------------------------- HTML


def _e(value) -> str:
    return html.escape("—" if value is None else str(value))


def _num(value, fmt: str = "{:,}") -> str:
    if value is None:
        return "—"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return _e(value)


def _kv_table(mapping: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in mapping.items())
    return f"<table>{rows}</table>"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if k in numeric else ''}>{cell}</td>"
                                    for k, cell in enumerate(row)) + "</tr>" for row in rows)  # fmt: skip
    return f"<table><tr>{head}</tr>{body}</table>"


def _section_parameters(run: StoredRun) -> str:
    p = run.protocol
    parts = ["<h2>Parameters</h2>", '<p class="muted">The resolved protocol (<code>protocol.yaml</code>), '
             "defaults and overrides filled in.</p>"]  # fmt: skip
    for key in ("dataset", "network", "simulation", "readout"):
        if isinstance(p.get(key), dict):
            parts += [f"<h3>{key}</h3>", _kv_table(p[key])]
    parts.append("<h3>models</h3>")
    for role, (what, params, changed) in _models(run).items():
        values = {k: f"{v}  (protocol)" if k in changed else v for k, v in params.items()}
        parts += [f"<p><b>{_e(role)}</b>: {_e(what)}</p>", _kv_table(values) if values else ""]
    rows = []
    for k, phase in enumerate(p.get("phases", [])):
        rest = {key: v for key, v in phase.items() if key not in ("name", "type")}
        settings = ", ".join(f"{a}={b}" for a, b in rest.items())
        rows.append([str(k), _e(phase.get("name")), _e(phase.get("type")), _e(settings)])
    parts += ["<h3>phases</h3>", _table(["#", "name", "type", "settings"], rows, {0})]
    return "\n".join(parts)


def _section_scores(run: StoredRun) -> str:
    if not run.scores:
        return "<h2>Scores</h2><p>No test phase has finished yet.</p>"
    parts = ["<h2>Scores</h2>", '<p class="muted">Test accuracy ± binomial standard error sqrt(p(1 − p)/n); '
             "samples without any Y spike count as wrong.</p>"]  # fmt: skip
    headline = readout.headline_test_phase(run.scores)
    for phase, methods in run.scores.items():
        rows = [[_e(m), _num(s.get("accuracy"), "{:.4f}"), _num(s.get("error"), "{:.4f}"), _num(s.get("n")),
                 _num(s.get("no_spike"))] for m, s in methods.items()]  # fmt: skip
        header = ["readout", "accuracy", "± s.e.", "n", "no spike"]
        note = ' <span class="muted">(headline: the figures, the index, sweeps)</span>' if phase == headline else ""
        parts += [f"<h3>{_e(phase)}{note}</h3>", _table(header, rows, {1, 2, 3, 4})]
    return "\n".join(parts)


def _section_timings(run: StoredRun) -> str:
    info = run.info
    build = info.get("build") or {}
    parts = ["<h2>Timings</h2>",
             _kv_table({"device": info.get("device"), "float": info.get("float"), "threads": info.get("threads"),
                        "build": "compiled for this run" if build.get("compiled") else "reused a compiled build",
                        "compile / prepare (s)": build.get("prepare_seconds"), "build key": build.get("key"),
                        "started": info.get("started"), "finished": info.get("finished")})]  # fmt: skip
    rows, total = [], 0.0
    for p in info.get("phases") or []:
        total += float(p.get("wall_seconds") or 0)
        rows.append([_e(p.get("name")), _e(p.get("type")), _num(p.get("n")), _num(p.get("wall_seconds"), "{:.2f}"),
                     _num(p.get("simulation_seconds"), "{:.2f}"), _num(p.get("samples_per_second"), "{:,.1f}"),
                     _num(p.get("evaluation_seconds"), "{:.2f}"), _num(p.get("readout_seconds"), "{:.2f}"),
                     _num(p.get("mean_spikes_per_sample"), "{:.2f}")])  # fmt: skip
    if rows:
        header = ["phase", "type", "samples", "wall (s)", "simulation (s)", "samples/s",
                  "learning-curve evaluations (s)", "readout (s)", "spikes/sample"]  # fmt: skip
        parts += [_table(header, rows, set(range(2, 9))), f"<p>Phases in all: {total:.1f} s wall time.</p>"]
    return "\n".join(parts)


def _section_progress(prog: dict | None) -> str:
    if prog is None:
        return ""
    phase = prog["phase"] or {}
    where = f"phase {prog['phase_index'] + 1}: {phase.get('name')} ({phase.get('type')})" if phase else "last phase"
    n = phase.get("n")
    in_phase = f", {prog['in_phase']:,} of {n:,} samples" if n else ""
    age = prog["checkpoint_age"]
    seen = "no checkpoint yet" if age is None else f"last checkpoint {age:.0f} s ago"
    return (f'<h2>Progress</h2><p id="progress">In {_e(where)}{_e(in_phase)}; '
            f'{prog["done"]:,} of {prog["total"]:,} samples in all '
            f'<progress value="{prog["done"]}" max="{max(prog["total"], 1)}"></progress> '
            f'{100 * prog["done"] / max(prog["total"], 1):.0f}% ({_e(seen)}). The figures show the checkpoint\'s '
            "state and whatever the finished phases wrote.</p>")  # fmt: skip


def report_html(run_dir, refresh: float | None = None) -> str:
    """The report page of a run directory; ``refresh`` (seconds) adds a meta refresh for an open browser.

    A running run's state figures come from its checkpoint (the latest state), the others from the files its
    finished phases wrote.
    """
    run = load_stored_run(run_dir)
    ck = checkpoint_state(run) if run.info.get("status") == "running" else None
    status = run_status(run.path, run.info)  # a killed process could not say so: interrupted
    if ck is not None:  # the figures read state.npz: give them the checkpoint's state instead
        run._cache["state.npz"] = {k: v for k, v in ck.items() if k not in ("phase", "chunk", "mtime")}
    drawn, skipped = render_figures(run)
    name = run.info.get("name") or run.protocol.get("name") or run.path.name
    meta = f'<meta http-equiv="refresh" content="{max(1, round(refresh))}">' if refresh else ""
    sizes = run.info.get("sizes") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (run.info.get("versions") or {}).items())
    essentials = {"run": run.info.get("id", run.path.name), "seed": run.info.get("seed"),
                  "protocol file": run.info.get("protocol_file"), "directory": run.path.resolve(),
                  "tags": run.info.get("tags") or None, "versions": versions or None}  # fmt: skip
    if run.info.get("error"):
        essentials["error"] = run.info["error"]
    if status != run.info.get("status"):
        essentials["error"] = f"the process running it is gone (killed?); lcsnn resume {run.path.name} finishes it"
    figs = []
    for fig_name, png in drawn.items():
        data = base64.b64encode(png).decode("ascii")
        figs.append(f'<figure><img data-figure="{fig_name}" alt="{fig_name}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_e(fig_name)}</figcaption></figure>")  # fmt: skip
    if skipped:
        figs.append("<p class=muted>Not drawn (the run has no data for them): "
                    + "; ".join(f"<b>{_e(k)}</b>: {_e(v)}" for k, v in skipped.items()) + ".</p>")  # fmt: skip
    written = time.strftime("%Y-%m-%d %H:%M:%S")
    note = f" (rewritten every {round(refresh)} s while the run trains)" if refresh else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{meta}
<title>{_e(name)}: {_e(status)}</title><style>{_CSS}</style></head>
<body>
<h1>{_e(name)} <span class="status {_e(status)}">{_e(status)}</span></h1>
<p>{_e(run.protocol.get("description") or "")}</p>
{_kv_table({k: v for k, v in essentials.items() if v is not None})}
<p class="muted">Written {written} by <code>lcsnn report</code>{note}.</p>
{_section_progress(progress(run, ck))}
{_section_scores(run)}
<h2>Sizes</h2>
{_kv_table({k: f"{v:,}" if isinstance(v, int) else v for k, v in sizes.items()})}
{_section_timings(run)}
<h2>Figures</h2>
{"".join(figs) or "<p>No figure yet.</p>"}
{_section_parameters(run)}
</body></html>
"""


def write_report(run_dir, out=None, refresh: float | None = None) -> Path:
    """Write the report of ``run_dir`` atomically to ``out`` (default ``<run>/report.html``); returns its path."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text(out, report_html(run_dir, refresh))
    return out


def _running(run_dir: Path) -> bool:
    """run.json says ``running`` and its process is alive (holds the run's lock)."""
    return run_status(run_dir, read_run_file(run_dir / "run.json")) == "running"


def watch(run_dir, out=None, seconds: float = 10.0, sleep=time.sleep) -> Path:
    """Rewrite the report every ``seconds`` while the run is running (with a meta refresh), then once more
    without it: when it ends, or when its process is gone (killed); Ctrl-C stops watching (and writes that
    last page)."""
    run_dir = Path(run_dir)
    try:
        while _running(run_dir):
            path = write_report(run_dir, out, refresh=seconds)
            logger.info("report refreshed: %s", path)
            sleep(seconds)
    except KeyboardInterrupt:
        print("stopped watching", file=sys.stderr)
    return write_report(run_dir, out)


# ----------------------------------------------------------------------------------------------- command line


def _report_command(args) -> int:
    run_dir = resolve_run(args.run, args.results)
    if args.watch is not None and args.watch <= 0:
        raise RunError(f"--watch {args.watch}: expected a positive number of seconds")
    path = watch(run_dir, args.out, args.watch) if args.watch is not None else write_report(run_dir, args.out)
    print(path)
    return 0


def register(subparsers) -> None:
    """Add ``lcsnn report RUN [--out FILE] [--watch [SECONDS]] [--results DIR]``."""
    report = subparsers.add_parser("report", help="one self-contained HTML page of a run (scores, timings, figures)")
    report.add_argument("run", help="the run directory, or a run id (or unique prefix) in the results folder")
    report.add_argument("--out", type=Path, help="the HTML file (default: <run>/report.html)")
    report.add_argument("--watch", type=float, nargs="?", const=10.0, metavar="SECONDS",
                        help="while the run trains, rewrite the page every SECONDS (default 10)")  # fmt: skip
    report.add_argument("--results", type=Path, help="results folder (default: $BRIAN_LCSNN_RESULTS or ./results)")
    report.set_defaults(handler=_report_command)
