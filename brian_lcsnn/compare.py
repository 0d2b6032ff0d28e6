"""Figures across runs, from the index of a results folder: ``lcsnn plot --runs FILTER ...``.

* the grid search: a score (``best_voting`` by default) over two axes, each a column of the index or a dotted
  protocol path (``parameters.yy.A_pos``), averaged over the runs of each cell (seeds, repeats) and annotated
  with their std and count (`grid`, `draw_heatmap`; a CSV of the cells next to the figure);
* the same as an interactive 3-D view, one point per run (hover: run id, seed, values, scores) over the surface of
  the cell means, written as one self-contained HTML file (plotly.js inline: it opens offline) (`grid_3d_html`);
* the architecture comparison: accuracy (best voting and linear, mean ± std over seeds) against the total number
  of parameters, one marker per architecture (`architecture_table`, `draw_architectures`).

Only finished runs count. The runs are chosen with the filters of ``lcsnn runs --filter`` (any column or dotted
protocol key), so a sweep's trials are just a filter away (``--runs sweep=NAME``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .figures import ACCENT, BAR, CMAP, FORMATS, _style
from .results import RunError, default_results_root, write_bytes, write_text
from .store import COLUMNS, RunIndex, _lookup, _number, _text, parse_filters

__all__ = ["Grid", "architecture_table", "draw_architectures", "draw_heatmap", "grid", "grid_3d_html",
           "markdown_table", "plot_across_runs", "select_runs"]  # fmt: skip

logger = logging.getLogger(__name__)

#: How scores are named on the figures (any other numeric column of the index is shown by its name).
SCORE_LABELS = {"best_voting": "best voting accuracy", "linear": "linear classifier accuracy",
                "best_voting_error": "s.e. of the best voting accuracy", "wall_seconds": "wall time (s)"}  # fmt: skip
#: Marker and colour of each architecture (YlOrBr's dark shades, as the run figures; the marker tells them apart).
ARCH_STYLE = {"LC": ("o", BAR), "C": ("s", ACCENT), "FC": ("^", "#ec7014")}
_NUMBER_UNIT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*?\s*([A-Za-z][A-Za-z0-9/*^ ]*)?\s*")


def select_runs(root, filters: dict | None = None):
    """The finished runs of the results folder ``root`` that match ``filters`` (as ``lcsnn runs --filter``).

    RunError (one line) when none matches.
    """
    root = Path(root)
    with RunIndex(root) as index:
        index.sync()
        frame = index.frame(filters or None)
    frame = frame[frame["status"] == "finished"].reset_index(drop=True)
    if frame.empty:
        what = " ".join(f"{k}={v}" for k, v in (filters or {}).items()) or "(no filter)"
        raise RunError(f"no finished run in {root} matches {what}")
    return frame


# ----------------------------------------------------------------------------------------------- grid


@dataclass
class Grid:
    """A score over two axes: cell ``[row, col]`` is y = ``y_labels[row]``, x = ``x_labels[col]``.

    ``mean``, ``std`` (sample std, ddof 1; NaN for one run) and ``n`` are arrays (n_y, n_x); ``points`` is the
    per-run frame (id, seed, the axes' labels and numeric values, the scores); ``x_ticks``/``y_ticks`` the
    numeric position of each label (its value, or its rank when the axis is not numeric).
    """

    x: str
    y: str
    score: str
    x_labels: list[str]
    y_labels: list[str]
    x_ticks: np.ndarray
    y_ticks: np.ndarray
    x_unit: str
    y_unit: str
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray
    points: object  # pandas DataFrame

    def table(self):
        """The cells as a long DataFrame: x, y, mean, std, n (cells without a run left out)."""
        import pandas as pd

        cells = [(r, c) for r in range(len(self.y_labels)) for c in range(len(self.x_labels)) if self.n[r, c]]
        rows = [{self.x: self.x_labels[c], self.y: self.y_labels[r], "mean": self.mean[r, c], "std": self.std[r, c],
                 "n": int(self.n[r, c])} for r, c in cells]  # fmt: skip
        return pd.DataFrame(rows, columns=[self.x, self.y, "mean", "std", "n"])


def _axis_values(frame, key: str) -> list:
    """The value of ``key`` (a column, or a dotted protocol path) for every run; None where a run has none."""
    if key in COLUMNS and key != "params_json":
        return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in frame[key].tolist()]
    values = []
    for text in frame["params_json"]:
        try:
            values.append(_lookup(json.loads(text), key))
        except (KeyError, TypeError, ValueError):
            values.append(None)
    if all(v is None for v in values):
        raise RunError(f"unknown axis {key!r}: neither a column of the index nor a protocol key of the selected runs")
    return values


def _numeric(values: list) -> tuple[list[float] | None, str]:
    """Numbers, or number-with-unit strings sharing one unit (``"16 ms"``), as floats and the unit; else None."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [float(v) for v in values], ""
    if not all(isinstance(v, str) for v in values):
        return None, ""
    matches = [_NUMBER_UNIT.fullmatch(v) for v in values]
    units = {(m.group(2) or "").strip() for m in matches if m}
    if not all(matches) or len(units) != 1:
        return None, ""
    return [float(m.group(1)) for m in matches], units.pop()


def _label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else _text(value)


def grid(frame, x: str, y: str, score: str = "best_voting") -> Grid:
    """The cells of ``score`` over the axes ``x`` and ``y`` (columns or dotted protocol paths) of ``frame``.

    Runs without a value of an axis or of the score are left out (logged). RunError for an unknown axis or
    score, an axis with a single value over the runs, or no run left.
    """
    import pandas as pd

    if score not in COLUMNS or COLUMNS[score] == "TEXT":
        numeric = [c for c, t in COLUMNS.items() if t != "TEXT"]
        raise RunError(f"unknown score {score!r}; numeric columns of the index: {', '.join(numeric)}")
    if x == y:
        raise RunError(f"--x and --y are both {x!r}")
    raw = {axis: _axis_values(frame, axis) for axis in (x, y)}
    scores = [_number(v) for v in frame[score]]
    keep = [k for k in range(len(frame)) if raw[x][k] is not None and raw[y][k] is not None
            and scores[k] is not None and not math.isnan(scores[k])]  # fmt: skip
    if len(keep) < len(frame):
        logger.info("%d of %d runs have no %s, %s or %s; left out", len(frame) - len(keep), len(frame), x, y, score)
    if not keep:
        raise RunError(f"no selected run has values of {x}, {y} and {score}")
    axes = {}
    for axis in (x, y):
        values = [raw[axis][k] for k in keep]
        numbers, unit = _numeric(values)
        labels = [_label(v) for v in values]
        order = sorted(set(zip(numbers or [0.0] * len(values), labels, strict=True)),
                       key=lambda item: (item[0], item[1]))  # numbers by value, text by text  # fmt: skip
        distinct = list(dict.fromkeys(label for _, label in order))
        if len(distinct) < 2:
            raise RunError(f"axis {axis!r} is constant ({distinct[0]}) over the {len(keep)} selected runs")
        ticks = dict(zip(labels, numbers, strict=True)) if numbers else {lab: i for i, lab in enumerate(distinct)}
        axes[axis] = labels, distinct, np.array([ticks[lab] for lab in distinct], dtype=float), unit
    rows = frame.iloc[keep]
    points = pd.DataFrame({"id": rows["id"].to_numpy(), "seed": rows["seed"].to_numpy(), "x": axes[x][0],
                           "y": axes[y][0], "score": [scores[k] for k in keep],
                           "best_voting": rows["best_voting"].to_numpy(dtype=float),
                           "best_voting_method": rows["best_voting_method"].to_numpy(),
                           "linear": rows["linear"].to_numpy(dtype=float)})  # fmt: skip
    x_labels, y_labels = axes[x][1], axes[y][1]
    shape = (len(y_labels), len(x_labels))
    mean, std, n = np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=int)
    for (xl, yl), cell in points.groupby(["x", "y"]):
        r, c = y_labels.index(yl), x_labels.index(xl)
        mean[r, c], n[r, c] = cell["score"].mean(), len(cell)
        std[r, c] = cell["score"].std(ddof=1) if len(cell) > 1 else np.nan
    points["x_value"] = [axes[x][2][x_labels.index(v)] for v in points["x"]]
    points["y_value"] = [axes[y][2][y_labels.index(v)] for v in points["y"]]
    return Grid(x, y, score, x_labels, y_labels, axes[x][2], axes[y][2], axes[x][3], axes[y][3], mean, std, n,
                points)  # fmt: skip


def _axis_title(key: str, unit: str) -> str:
    return f"{key} ({unit})" if unit else key


def draw_heatmap(g: Grid, fig) -> None:
    """The grid as an annotated seaborn heatmap: mean, ± std and n per cell; larger y upwards."""
    import seaborn as sns

    annot = np.empty(g.mean.shape, dtype=object)
    for (r, c), m in np.ndenumerate(g.mean):
        spread = "" if np.isnan(g.std[r, c]) else f"\n± {g.std[r, c]:.3f}"
        annot[r, c] = "" if g.n[r, c] == 0 else f"{m:.3f}{spread}\nn={g.n[r, c]}"
    fig.set_size_inches(min(3 + 1.1 * len(g.x_labels), 16), min(2 + 0.8 * len(g.y_labels), 12))
    ax = fig.add_subplot()
    name = SCORE_LABELS.get(g.score, g.score)
    sns.heatmap(g.mean, ax=ax, cmap=CMAP, annot=annot, fmt="", annot_kws={"size": 7}, linewidths=0.5,
                linecolor="white", xticklabels=g.x_labels, yticklabels=g.y_labels,
                cbar_kws={"label": f"{name} (cell mean)"})  # fmt: skip
    ax.invert_yaxis()
    ax.set(xlabel=_axis_title(g.x, g.x_unit), ylabel=_axis_title(g.y, g.y_unit))
    ax.set_title(f"{name[0].upper()}{name[1:]} of {int(g.n.sum())} finished runs\nper cell: mean ± std over its "
                 "runs (seeds, repeats), n runs; blank: no run", loc="left")  # fmt: skip


def grid_3d_html(g: Grid) -> str:
    """The grid as an interactive plotly 3-D view, one self-contained HTML page (plotly.js inline, no CDN)."""
    import plotly.graph_objects as go

    name = SCORE_LABELS.get(g.score, g.score)
    p = g.points
    hover = [f"run {r.id}<br>seed {r.seed}<br>{g.x} = {r.x}<br>{g.y} = {r.y}<br>{g.score} = {r.score:.4f}"
             f"<br>best voting {r.best_voting:.4f} ({r.best_voting_method})<br>linear {r.linear:.4f}"
             for r in p.itertuples()]  # fmt: skip
    fig = go.Figure()
    nan_to_none = [[None if np.isnan(v) else float(v) for v in row] for row in g.mean]  # plain JSON in the page
    fig.add_trace(go.Surface(x=g.x_ticks.tolist(), y=g.y_ticks.tolist(), z=nan_to_none, colorscale=CMAP,
                             opacity=0.55, name="cell mean", colorbar={"title": {"text": "cell mean"}},
                             hovertemplate="cell mean %{z:.4f}<extra></extra>"))  # fmt: skip
    fig.add_trace(go.Scatter3d(x=p["x_value"].tolist(), y=p["y_value"].tolist(), z=p["score"].tolist(),
                               mode="markers", name="run",
                               marker={"size": 4, "color": ACCENT}, text=hover, hoverinfo="text"))  # fmt: skip

    def axis(key, unit, labels, ticks):
        return {"title": {"text": _axis_title(key, unit)}, "tickvals": list(ticks), "ticktext": labels}

    fig.update_layout(
        title={"text": f"{name}: one point per finished run ({len(p)}), surface: mean per cell"},
        scene={"xaxis": axis(g.x, g.x_unit, g.x_labels, g.x_ticks), "yaxis": axis(g.y, g.y_unit, g.y_labels, g.y_ticks),
               "zaxis": {"title": {"text": name}}},
        margin={"l": 0, "r": 0, "t": 40, "b": 0}, template="plotly_white",
    )  # fmt: skip
    return fig.to_html(include_plotlyjs=True, full_html=True)


# ----------------------------------------------------------------------------------------------- architectures


#: Protocol keys that are no setting of a run: runs that differ only in them are seeds of the same settings.
NOT_SETTINGS = ("seed", "name", "description")


def _flat(value, prefix: str = "") -> dict:
    """A protocol as ``{dotted key: JSON text}`` (list items by index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: json.dumps(value, default=str)}
    out = {}
    for key, item in items:
        out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
    return out or {prefix: json.dumps(value)}  # an empty mapping or list is a value too


def _settings(frame) -> list[dict]:
    """Each run's settings: its protocol (``params_json``) as dotted keys, less `NOT_SETTINGS`."""
    protocols = [json.loads(text) if isinstance(text, str) else {} for text in frame["params_json"]]
    return [_flat({k: v for k, v in protocol.items() if k not in NOT_SETTINGS}) for protocol in protocols]


def _setting_labels(settings: list[dict]) -> list[str]:
    """Short labels of distinct settings of one network: the keys whose values differ between them."""
    if len(settings) < 2:
        return [""] * len(settings)
    keys = sorted({k for s in settings for k in s})
    differ = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    return [", ".join(f"{k}={json.loads(s[k]) if k in s else '-'}" for k in differ) for s in settings]


def architecture_table(frame):
    """Accuracy per network (architecture, n_filters, kernel_size) and settings: mean, std and n over its finished
    runs. Only seeds of the same settings (the same protocol but for `NOT_SETTINGS`) are pooled; a network run with
    several settings has a row for each, ``settings`` naming the protocol keys in which they differ."""
    import pandas as pd

    keys = ["architecture", "n_filters", "kernel_size"]
    usable = frame.dropna(subset=[*keys, "total_parameters"])
    if usable.empty:
        raise RunError("no selected run has an architecture and a total_parameters")
    usable = usable.assign(_settings=[json.dumps(s, sort_keys=True) for s in _settings(usable)])
    rows = []
    for (arch, n_filters, kernel), network in usable.groupby(keys, sort=True):
        distinct = list(dict.fromkeys(network["_settings"]))
        labels = dict(zip(distinct, _setting_labels([json.loads(s) for s in distinct]), strict=True))
        for setting, runs in network.groupby("_settings", sort=False):
            rows.append(_architecture_row(arch, n_filters, kernel, labels[setting], runs))
    return pd.DataFrame(rows).sort_values(
        ["architecture", "total_parameters", "n_filters", "kernel_size", "settings"], ignore_index=True
    )


def _architecture_row(arch, n_filters, kernel, settings: str, runs) -> dict:
    """One row of `architecture_table`: the seeds of one setting of one network."""
    row = {"architecture": arch, "n_filters": int(n_filters), "kernel_size": int(kernel), "settings": settings,
           "total_parameters": int(runs["total_parameters"].median()), "runs": len(runs)}  # fmt: skip
    for score in ("best_voting", "linear"):
        values = runs[score].astype(float).dropna()
        row[f"{score}_mean"] = values.mean() if len(values) else np.nan
        row[f"{score}_std"] = values.std(ddof=1) if len(values) > 1 else np.nan
    return row


def markdown_table(table) -> str:
    """The architecture table as markdown (accuracies as mean ± std)."""

    def acc(row, score):
        m, s = row[f"{score}_mean"], row[f"{score}_std"]
        return "—" if np.isnan(m) else f"{m:.4f}" + ("" if np.isnan(s) else f" ± {s:.4f}")

    several = bool(table["settings"].astype(bool).any())  # a settings column only where a network has several
    lines = ["| architecture | filters | kernel |" + (" settings |" if several else "")
             + " parameters | runs | best voting | linear |", "|---" * (8 if several else 7) + "|"]  # fmt: skip
    for _, r in table.iterrows():
        settings = f" {r['settings'] or '—'} |" if several else ""
        lines.append(f"| {r['architecture']} | {r['n_filters']} | {r['kernel_size']} |{settings} "
                     f"{r['total_parameters']:,} | {r['runs']} | {acc(r, 'best_voting')} | "
                     f"{acc(r, 'linear')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def draw_architectures(table, fig) -> None:
    """Best voting and linear accuracy (mean ± std over seeds) against total parameters, log x."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig.set_size_inches(11, 4.8)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, score in zip(axes, ("best_voting", "linear"), strict=True):
        for arch, rows in table.groupby("architecture", sort=True):
            marker, colour = ARCH_STYLE.get(arch, ("D", "0.3"))
            ax.errorbar(rows["total_parameters"], rows[f"{score}_mean"], yerr=rows[f"{score}_std"].fillna(0),
                        ls="none", marker=marker, color=colour, ms=7, capsize=3, label=arch)  # fmt: skip
            for _, r in rows.iterrows():
                text = f"{r['n_filters']}" if arch == "FC" else f"{r['n_filters']}/{r['kernel_size']}"
                text += f" ({r['settings']})" if r["settings"] else ""
                ax.annotate(text, (r["total_parameters"], r[f"{score}_mean"]), xytext=(5, 4),
                            textcoords="offset points", fontsize=7)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 10k, 20k, 50k, ...: readable
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.12, y=0.08)  # room for the labels of the outermost points
        ax.set(xlabel="total parameters (learnable XY + YY synapses, log scale)",
               title=f"{SCORE_LABELS[score]} (test)")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean ± std over seeds of the same settings)")
    axes[0].legend(frameon=False, title="architecture")
    fig.suptitle("Architectures: accuracy vs size; labels: filters/kernel size", x=0.01, ha="left", fontsize=10)


# ----------------------------------------------------------------------------------------------- output


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _save(draw, data, path: Path, fmt: str) -> Path:
    from matplotlib.figure import Figure

    with _style():
        fig = Figure()
        draw(data, fig)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
    write_bytes(path, buf.getvalue())
    return path


def plot_across_runs(root, filters: dict | None = None, *, x: str | None = None, y: str | None = None,
                     score: str = "best_voting", architectures: bool = False, out=None,
                     fmt: str = "png") -> tuple[list[Path], str | None]:  # fmt: skip
    """Write the grid figure, its CSV and its 3-D HTML (with ``x`` and ``y``) and/or the architecture comparison
    (figure, CSV and markdown) into ``out`` (default ``<root>/figures``). Returns the written paths and the
    markdown table of architectures (or None)."""
    if fmt not in FORMATS:
        raise RunError(f"unknown figure format {fmt!r}; known: {', '.join(FORMATS)}")
    if (x is None) != (y is None):
        raise RunError("give both --x and --y (the grid's two axes)")
    if x is None and not architectures:
        raise RunError("give --x and --y (a grid search), or --compare-architectures")
    frame = select_runs(root, filters)
    out = Path(out) if out is not None else Path(root) / "figures"
    written, markdown = [], None
    if x is not None:
        g = grid(frame, x, y, score)  # every check before anything is written
        out.mkdir(parents=True, exist_ok=True)
        stem = f"grid_{_slug(score)}_{_slug(x)}_{_slug(y)}"
        written.append(_save(draw_heatmap, g, out / f"{stem}.{fmt}", fmt))
        write_text(out / f"{stem}.csv", g.table().to_csv(index=False))
        write_text(out / f"{stem}.html", grid_3d_html(g))
        written += [out / f"{stem}.csv", out / f"{stem}.html"]
    if architectures:
        table = architecture_table(frame)
        out.mkdir(parents=True, exist_ok=True)
        markdown = markdown_table(table)
        written.append(_save(draw_architectures, table, out / f"architectures.{fmt}", fmt))
        write_text(out / "architectures.csv", table.to_csv(index=False))
        write_text(out / "architectures.md", markdown)
        written += [out / "architectures.csv", out / "architectures.md"]
    return written, markdown


def plot_command(args) -> int:
    """``lcsnn plot --runs FILTER ... (--x COL --y COL | --compare-architectures)``: paths on stdout, the
    architecture table on stderr."""
    import sys

    root = args.results if args.results is not None else default_results_root()
    written, markdown = plot_across_runs(root, parse_filters(args.runs, "--runs"), x=args.x, y=args.y,
                                         score=args.score, architectures=args.compare_architectures, out=args.out,
                                         fmt=args.format)  # fmt: skip
    if markdown:
        print(markdown, file=sys.stderr)
    for path in written:
        print(path)
    return 0
