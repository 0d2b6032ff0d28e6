"""Sweeps: many runs of one protocol over a grid, random draws or an adaptive search, and seeds.

A sweep file (YAML) names a base protocol, fixed overrides (``set``), axes (any protocol value by its dotted
key), seeds, a search (``grid``, ``random``, ``optuna``), an objective (a test score, maximised) and a budget.
Every trial is an ordinary run in the results folder, tagged ``{"sweep", "trial", "values", "seed"}`` in its
run.json, so the index (`brian_lcsnn.store`) lists it (``lcsnn runs --sweep NAME``) and a trial is identified
by its sweep name, its values and its seed: a finished one is never run again, an interrupted one is resumed
from its checkpoint, a failed one is recorded with its error and the sweep goes on. SIGINT or SIGTERM to the
client stops the sweep: no trial starts, the running ones get SIGTERM (their runs marked interrupted at their
last checkpoint), the workers close, the summary is written, exit 130 or 143 (`run_sweep` raises `Interrupted`).

Each trial runs in a subprocess (``python -m brian_lcsnn.sweep trial SPEC``) started by the executor's task,
not in the worker process itself: Brian2 keeps its device in global state (one standalone build per process at
a time), a subprocess isolates crashes and memory, and "a killed worker" is then well defined: the subprocess
watches its parent and kills itself (and the compiled binary it runs) when the parent is gone, so a trial never
outlives its worker; a per-trial lock file keeps two processes off one trial. Executors: local processes
(default, ``--workers N``) or Dask (``--local-cluster N``, ``--scheduler tcp://HOST:PORT``). Each worker has
its own build folder, ``<build root>/workers/<host>-<worker>`` (locked while a trial runs in it), because the
C++ builds are compiled for their host (-march=native) and concurrent runs of one build directory would share
its run_args files; compiled code is reused by the trials of the same structure on a worker.

Files of a sweep, under ``<results>/sweeps/<name>/``: ``sweep.json`` (the resolved sweep and its base
protocol's hash), ``failures.json`` (failed trials and their errors), ``summary.json`` and ``summary.csv``,
``locks/`` (one lock per running trial, and the sweep's own).
"""

from __future__ import annotations

import argparse
import copy
import csv
import fcntl
import hashlib
import io
import itertools
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .results import RunError, default_results_root, read_json, write_json, write_text

__all__ = ["SweepError", "Axis", "Trial", "Sweep", "load_sweep", "grid_trials", "random_trials", "objective_value",
           "run_sweep", "summarise", "register"]  # fmt: skip

logger = logging.getLogger(__name__)

SEARCHES = ("grid", "random", "optuna")
SAMPLERS = ("tpe", "cmaes")
SWEEP_KEYS = ("name", "description", "protocol", "set", "axes", "seeds", "search", "objective", "budget")
RANGE_KEYS = ("min", "max", "num", "step", "log", "type", "unit")
SEARCH_KEYS = {"grid": ("method",), "random": ("method", "n", "seed"), "optuna": ("method", "n", "seed", "sampler")}
BUDGET_KEYS = ("max_trials", "max_hours")
#: Scores of a test phase besides its methods: the best of the voting methods (as the index's best_voting).
BEST_VOTING = "best_voting"


class SweepError(RunError):
    """A sweep file that cannot run; one line naming the file and the key (exit code 2, nothing run)."""


# ---------------------------------------------------------------- the sweep file


@dataclass(frozen=True)
class Axis:
    """One swept protocol value: a list of ``values``, or a range [low, high] (``num`` points for a grid;
    ``log``: geometric points / log-uniform draws; ``integer``: whole numbers). ``unit`` (a Brian2 unit) is
    appended to the value in the protocol (``17.7`` -> ``"17.7 ms"``); the trial's values stay plain numbers."""

    key: str
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    num: int | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False
    unit: str | None = None

    def grid(self) -> list:
        """The values of this axis in a grid."""
        import numpy as np

        if self.values is not None:
            return list(self.values)
        if self.step is not None:
            points = np.arange(self.low, self.high + self.step * 1e-9, self.step)
        elif self.log:
            points = np.geomspace(self.low, self.high, self.num)
        else:
            points = np.linspace(self.low, self.high, self.num)
        if self.integer:
            return sorted({int(round(p)) for p in points})
        return [_tidy(p) for p in points]

    def draw(self, rng) -> object:
        """One random value (uniform, log-uniform, integer or one of the values)."""
        if self.values is not None:
            return self.values[int(rng.integers(len(self.values)))]
        if self.integer:
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.log:
            return _tidy(math.exp(rng.uniform(math.log(self.low), math.log(self.high))), 6)
        return _tidy(rng.uniform(self.low, self.high), 6)

    def tidy(self, value):
        """An adaptive search's suggestion rounded to 6 significant digits (within the range): readable trial
        names, and the value the run uses is the one the study is told about after a restart."""
        if self.values is not None or self.integer:
            return value
        return min(max(_tidy(value, 6), self.low), self.high)

    def distribution(self):
        """The Optuna distribution of this axis."""
        import optuna

        if self.values is not None:
            return optuna.distributions.CategoricalDistribution(list(self.values))
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def override(self, value) -> str:
        """``key=value`` for `protocol.apply_overrides` (a YAML value that reads back as the same value)."""
        return f"{self.key}={f'{value} {self.unit}' if self.unit else _yaml_text(value)}"


def _yaml_text(value) -> str:
    """A value as YAML text that reads back as the same value (1e-05 -> 1.0e-05, a float in YAML 1.1)."""
    return yaml.safe_dump([value], default_flow_style=True, width=math.inf).strip()[1:-1]


def _tidy(value, digits: int = 12) -> float:
    """A float rounded to ``digits`` significant digits: 0.30000000000000004 -> 0.3 (readable trial names)."""
    return float(f"{float(value):.{digits}g}")


@dataclass(frozen=True)
class Trial:
    """One run of a sweep: the axes' values and a seed; ``key`` is its identity within the sweep."""

    values: dict
    seed: int

    @property
    def key(self) -> str:
        return " ".join([*(f"{k}={_plain(v)}" for k, v in sorted(self.values.items())), f"seed={self.seed}"])

    @property
    def group(self) -> str:
        """The parameter set (the trial without its seed)."""
        return json.dumps(self.values, sort_keys=True)


def _plain(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


@dataclass
class Sweep:
    """A checked sweep file. ``protocol`` is the base protocol with the fixed overrides (``set`` and
    command-line ``--set``) applied; ``fixed`` those overrides as ``key=value`` strings."""

    path: Path
    name: str
    description: str
    protocol_path: Path
    fixed: list
    axes: list
    seeds: list
    search: dict
    objective: str
    budget: dict
    protocol: object = field(repr=False, default=None)
    raw: dict = field(repr=False, default_factory=dict)

    def overrides(self, trial: Trial) -> list[str]:
        """The ``--set`` strings that make a trial's protocol from the base protocol file."""
        by_key = {axis.key: axis for axis in self.axes}
        return [*self.fixed, *(by_key[k].override(v) for k, v in trial.values.items()), f"seed={trial.seed}"]

    def base_hash(self) -> str:
        """The resolved base protocol's hash: a restarted sweep must run the protocol it started with."""
        data = copy.deepcopy(self.protocol.data)
        data.pop("seed", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fail(where: str, what: str):
    raise SweepError(f"{where}: {what}")


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(where, f"expected a finite number, got {value!r}")
    return float(value)


def _axis(key, spec, where: str) -> Axis:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        _fail(where, "an axis is a dotted protocol key, e.g. network.mean_weight")
    if key == "seed":
        _fail(where, "seeds are given by 'seeds:', not as an axis")
    if isinstance(spec, list):
        spec = {"values": spec}
    if not isinstance(spec, dict):
        _fail(where, f"expected a list of values or a range {{min, max, num}}, got {spec!r}")
    unit = spec.get("unit")
    if unit is not None:
        from .models import ModelError, parse_quantity

        try:
            parse_quantity(f"1 {unit}", where)
        except (ModelError, ValueError, TypeError):
            _fail(f"{where}.unit", f"not a Brian2 unit: {unit!r}")
    if "values" in spec:
        if extra := set(spec) - {"values", "unit"}:
            _fail(f"{where}.{sorted(extra)[0]}", "unknown key next to 'values' (allowed: values, unit)")
        values = spec["values"]
        if not isinstance(values, list) or not values:
            _fail(where, "expected a non-empty list of values")
        for k, value in enumerate(values):
            if not isinstance(value, int | float | str | bool) or (unit and not isinstance(value, int | float)):
                _fail(f"{where}[{k}]", f"expected a {'number' if unit else 'scalar'}, got {value!r}")
        if len(set(map(_plain, values))) != len(values):
            _fail(where, "repeated value")
        return Axis(key, values=tuple(values), unit=unit)
    for name in spec:
        if name not in RANGE_KEYS:
            _fail(f"{where}.{name}", f"unknown key (allowed: values, {', '.join(RANGE_KEYS)})")
    if "min" not in spec or "max" not in spec:
        _fail(where, "a range needs min and max")
    low, high = _number(spec["min"], f"{where}.min"), _number(spec["max"], f"{where}.max")
    if not low < high:
        _fail(where, f"min must be < max, got {spec['min']} and {spec['max']}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        _fail(f"{where}.log", f"expected true or false, got {log!r}")
    if log and low <= 0:
        _fail(f"{where}.log", f"a log range needs min > 0, got {spec['min']}")
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        _fail(f"{where}.type", f"must be float or int, got {kind!r}")
    num = spec.get("num")
    if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 1):
        _fail(f"{where}.num", f"expected an integer >= 1, got {num!r}")
    step = spec.get("step")
    if step is not None:
        if num is not None:
            _fail(f"{where}.step", "give num or step, not both")
        if _number(step, f"{where}.step") <= 0:
            _fail(f"{where}.step", f"must be > 0, got {step}")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        _fail(where, "an int range needs whole min and max")
    return Axis(key, low=low, high=high, num=num, step=None if step is None else float(step), log=log,
                integer=kind == "int", unit=unit)  # fmt: skip


def _seeds(value, where: str) -> list | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        _fail(where, f"expected a non-empty list of seeds (integers >= 0), got {value!r}")
    for k, seed in enumerate(value):
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            _fail(f"{where}[{k}]", f"expected an integer >= 0, got {seed!r}")
    if len(set(value)) != len(value):
        _fail(where, "repeated seed")
    return list(value)


def _check_objective(objective, protocol, where: str) -> str:
    """``PHASE.METHOD`` (a test phase of the base protocol) or a METHOD of its headline (last) test phase."""
    from .readout import VOTING_METHODS

    if not isinstance(objective, str) or not objective:
        _fail(where, f"expected PHASE.METHOD or METHOD (e.g. test.best_voting, linear), got {objective!r}")
    tests = [p["name"] for p in protocol["phases"] if p["type"] == "test"]
    if not tests:
        _fail(where, "the base protocol has no test phase to score")
    phase, _, method = objective.rpartition(".")
    if phase and phase not in tests:
        _fail(where, f"no test phase {phase!r} in the base protocol (test phases: {', '.join(tests)})")
    methods = [*VOTING_METHODS, BEST_VOTING, *(f"top_{n}" for n in protocol["readout"]["top_n"])]
    methods += ["linear"] if protocol["readout"]["linear"] else []
    if method not in methods:
        _fail(where, f"unknown score {method!r} (this protocol scores: {', '.join(methods)})")
    return objective


def load_sweep(path, overrides: list[str] | tuple = ()) -> Sweep:
    """Read and check a sweep file; ``overrides`` (``key=value``) are fixed overrides of the base protocol.

    Every trial's protocol is checked before anything runs (a grid's every point; a range's ends for random
    and adaptive searches); every problem is a `SweepError` (or `ProtocolError`) of one line.
    """
    from .models import read_yaml
    from .protocol import ProtocolError, load_protocol

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: sweep file not found")
    raw = read_yaml(path, SweepError)
    w = str(path)
    if not isinstance(raw, dict):
        _fail(w, "a sweep file must be a mapping (name, protocol, axes, ...)")
    for key in raw:
        if key not in SWEEP_KEYS:
            _fail(f"{w}: {key}", f"unknown key (allowed: {', '.join(SWEEP_KEYS)})")
    name = raw.get("name") or path.stem
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        _fail(f"{w}: name", f"expected a name of letters, digits, '-', '_' or '.', got {name!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        _fail(f"{w}: description", "expected a string")
    if not isinstance(raw.get("protocol"), str):
        _fail(f"{w}: protocol", "expected the base protocol's file (relative to the sweep file)")
    protocol_path = Path(raw["protocol"])
    if not protocol_path.is_absolute():
        protocol_path = (path.parent / protocol_path).resolve()
    if not protocol_path.is_file():
        _fail(f"{w}: protocol", f"no such protocol file {protocol_path}")
    fixed_spec = raw.get("set") or {}
    if not isinstance(fixed_spec, dict):
        _fail(f"{w}: set", "expected a mapping of dotted.key: value")
    fixed = [f"{k}={_yaml_text(v)}" for k, v in fixed_spec.items()]
    fixed += list(overrides)
    axes_spec = raw.get("axes") or {}
    if not isinstance(axes_spec, dict):
        _fail(f"{w}: axes", "expected a mapping of dotted.key: values or range")
    axes = [_axis(key, spec, f"{w}: axes.{key}") for key, spec in axes_spec.items()]
    seeds = _seeds(raw.get("seeds"), f"{w}: seeds")

    search = raw.get("search") or {"method": "grid"}
    if not isinstance(search, dict):
        _fail(f"{w}: search", "expected a mapping with a method (grid, random, optuna)")
    method = search.get("method", "grid")
    if method not in SEARCHES:
        _fail(f"{w}: search.method", f"must be one of {', '.join(SEARCHES)}, got {method!r}")
    for key in search:
        if key not in SEARCH_KEYS[method]:
            allowed = ", ".join(SEARCH_KEYS[method])
            _fail(f"{w}: search.{key}", f"unknown key for a {method} search (allowed: {allowed})")
    search = {"method": method, **{k: v for k, v in search.items() if k != "method"}}
    if method != "grid":
        n = search.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            _fail(f"{w}: search.n", f"a {method} search needs n (parameter sets to try), an integer >= 1; got {n!r}")
        seed = search.setdefault("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            _fail(f"{w}: search.seed", f"expected an integer >= 0, got {seed!r}")
        if not axes:
            _fail(f"{w}: axes", f"a {method} search needs at least one axis")
    if method == "optuna":
        sampler = search.setdefault("sampler", "tpe")
        if sampler not in SAMPLERS:
            _fail(f"{w}: search.sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if method == "grid":
        for axis in axes:
            if axis.values is None and axis.num is None and axis.step is None:
                _fail(f"{w}: axes.{axis.key}", "a grid range needs num (points) or step")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict):
        _fail(f"{w}: budget", "expected a mapping (max_trials, max_hours)")
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            _fail(f"{w}: budget.{key}", f"unknown key (allowed: {', '.join(BUDGET_KEYS)})")
        kind = "integer" if key == "max_trials" else "number"
        positive = value is None or _number(value, f"{w}: budget.{key}") > 0
        if not positive or (value is not None and kind == "integer" and not isinstance(value, int)):
            _fail(f"{w}: budget.{key}", f"expected a positive {kind}, got {value!r}")
    budget = {key: budget.get(key) for key in BUDGET_KEYS}

    try:
        protocol = load_protocol(protocol_path, fixed)
    except ProtocolError as err:
        raise SweepError(f"{w}: protocol: {err}") from None
    objective = _check_objective(raw.get("objective", BEST_VOTING), protocol, f"{w}: objective")
    sweep = Sweep(path=path.resolve(), name=name, description=description, protocol_path=protocol_path, fixed=fixed,
                  axes=axes, seeds=seeds or [protocol["seed"]], search=search, objective=objective, budget=budget,
                  protocol=protocol, raw=raw)  # fmt: skip
    for trial in _probe_trials(sweep):
        try:
            load_protocol(protocol_path, sweep.overrides(trial))
        except ProtocolError as err:
            raise SweepError(f"{w}: trial {trial.key}: {err}") from None
    return sweep


def _probe_trials(sweep: Sweep) -> list[Trial]:
    """Trials whose protocols, once checked, show that every trial of the sweep can run: every grid point;
    for random and adaptive searches each axis at its ends (and each listed value), the others at their first."""
    seed = sweep.seeds[0]
    if sweep.search["method"] == "grid":
        return [Trial(t.values, seed) for t in grid_trials(sweep) if t.seed == seed]
    ends = {a.key: list(a.values) if a.values is not None else [int(a.low) if a.integer else a.low,
                                                                 int(a.high) if a.integer else a.high]
            for a in sweep.axes}  # fmt: skip
    first = {key: values[0] for key, values in ends.items()}
    return [Trial({**first, key: v}, seed) for key, values in ends.items() for v in values]


def grid_trials(sweep: Sweep) -> list[Trial]:
    """The cartesian product of the axes, each point with every seed (seeds innermost), in file order."""
    keys = [axis.key for axis in sweep.axes]
    points = itertools.product(*(axis.grid() for axis in sweep.axes))
    return [Trial(dict(zip(keys, point, strict=True)), seed) for point in points for seed in sweep.seeds]


def random_trials(sweep: Sweep) -> list[Trial]:
    """``search.n`` draws (uniform, log-uniform, integer, or from the listed values) from ``search.seed``, each
    with every seed: the same list on every start, so a restarted sweep knows its trials."""
    import numpy as np

    rng = np.random.default_rng(sweep.search["seed"])
    trials, seen = [], set()
    for _ in range(sweep.search["n"]):
        values = {axis.key: axis.draw(rng) for axis in sweep.axes}
        if json.dumps(values, sort_keys=True) in seen:  # a repeat (small lists): its runs exist already
            continue
        seen.add(json.dumps(values, sort_keys=True))
        trials += [Trial(values, seed) for seed in sweep.seeds]
    return trials


# ---------------------------------------------------------------- scores and the summary


def objective_value(scores: dict, objective: str) -> float | None:
    """The objective's accuracy in a run's scores.json (None if the run has no such score)."""
    from .readout import VOTING_METHODS, headline_test_phase

    phase, _, method = objective.rpartition(".")
    if not scores:
        return None
    methods = scores.get(phase or headline_test_phase(scores))  # scores.json keeps phase order
    if not isinstance(methods, dict):
        return None
    if method == BEST_VOTING:
        found = [methods[m]["accuracy"] for m in VOTING_METHODS if m in methods]
        return max(found) if found else None
    return methods.get(method, {}).get("accuracy")


def _flat_scores(scores: dict) -> dict:
    """``{"PHASE.METHOD": accuracy}`` for every test phase and method, and PHASE.best_voting."""
    flat = {}
    for phase, methods in scores.items():
        for method, score in methods.items():
            flat[f"{phase}.{method}"] = score["accuracy"]
        best = objective_value(scores, f"{phase}.{BEST_VOTING}")
        if best is not None:
            flat[f"{phase}.{BEST_VOTING}"] = best
    return flat


def _mean_std(values: list) -> dict:
    """Mean and sample standard deviation (ddof 1; None for a single value) of the seeds' scores."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else None
    return {"mean": float(array.mean()), "std": std, "n": len(array)}


def _sweep_runs(results: Path, name: str) -> list[dict]:
    """The runs of a sweep in the index: ``{"id", "dir", "status", "trial", "values", "seed", "scores",
    "error"}`` in id order (the index is synced first)."""
    from .store import RunIndex

    with RunIndex(results) as index:
        index.sync()
        rows = index.records({"sweep": name})
    runs = []
    for row in rows:
        run_dir = results / row["id"]
        try:
            info = read_json(run_dir / "run.json")
            scores = read_json(run_dir / "scores.json") if (run_dir / "scores.json").exists() else {}
        except (OSError, ValueError):
            continue  # changed since indexed; the next sync sees it
        tags = info.get("tags") or {}
        runs.append({"id": row["id"], "dir": run_dir, "status": info.get("status"), "trial": tags.get("trial"),
                     "values": tags.get("values") or {}, "seed": tags.get("seed"), "scores": scores,
                     "error": info.get("error")})  # fmt: skip
    return runs


def _sweep_dir(results: Path, name: str) -> Path:
    return Path(results) / "sweeps" / name


def summarise(results, name: str, objective: str = BEST_VOTING, planned: list[Trial] | None = None) -> dict:
    """The summary of a sweep from the index: the best trial, and per parameter set the mean ± std (ddof 1)
    over seeds of every score (and of the objective) with n; failed trials with their errors.
    Written to ``<results>/sweeps/<name>/summary.json`` and ``summary.csv``; returned as a dict."""
    results = Path(results)
    runs = _sweep_runs(results, name)
    finished = {}
    for run in runs:  # one run per trial (the latest, should a trial have run twice)
        if run["status"] == "finished":
            finished[run["trial"]] = run
    groups: dict[str, dict] = {}
    for run in finished.values():
        key = json.dumps(run["values"], sort_keys=True)
        group = groups.setdefault(key, {"values": run["values"], "seeds": [], "runs": [], "_scores": {},
                                        "_objective": []})  # fmt: skip
        group["seeds"].append(run["seed"])
        group["runs"].append(run["id"])
        for score, value in _flat_scores(run["scores"]).items():
            group["_scores"].setdefault(score, []).append(value)
        value = objective_value(run["scores"], objective)
        if value is not None:
            group["_objective"].append(value)
    table = []
    for group in groups.values():
        scores = {k: _mean_std(v) for k, v in sorted(group.pop("_scores").items())}
        values = group.pop("_objective")
        table.append({**group, "n": len(group["runs"]), "objective": _mean_std(values) if values else None,
                      "scores": scores})  # fmt: skip
    table.sort(key=lambda g: -(g["objective"]["mean"] if g["objective"] else -math.inf))
    scored = [(objective_value(r["scores"], objective), r) for r in finished.values()]
    scored = [(v, r) for v, r in scored if v is not None]
    best = max(scored, key=lambda item: item[0], default=None)
    failures = _read_failures(results, name)
    failed = [f for key, f in failures.items() if key not in finished]
    # stopped or killed, neither finished nor failed since: the next start of the sweep resumes them
    interrupted = {r["trial"] for r in runs if r["status"] != "finished"} - set(finished) - set(failures)
    summary = {
        "sweep": name,
        "objective": objective,
        "trials": {"finished": len(finished), "failed": len(failed), "interrupted": len(interrupted),
                   "planned": None if planned is None else len(planned),
                   "pending": None if planned is None else sum(t.key not in finished for t in planned)},
        "best": None if best is None else {"run": best[1]["id"], "trial": best[1]["trial"], "values": best[1]["values"],
                                           "seed": best[1]["seed"], "objective": best[0]},
        "best_parameters": table[0] if table and table[0]["objective"] else None,
        "parameter_sets": table,
        "failed": failed,
    }  # fmt: skip
    folder = _sweep_dir(results, name)
    write_json(folder / "summary.json", summary)
    write_text(folder / "summary.csv", _summary_csv(table))
    return summary


def _summary_csv(table: list[dict]) -> str:
    keys = sorted({k for g in table for k in g["values"]})
    scores = sorted({s for g in table for s in g["scores"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*keys, "n", "seeds", "objective_mean", "objective_std",
                     *itertools.chain.from_iterable((f"{s}_mean", f"{s}_std") for s in scores)])  # fmt: skip
    for g in table:
        obj = g["objective"] or {}
        row = [*(g["values"].get(k) for k in keys), g["n"], " ".join(map(str, g["seeds"]))]
        row += [obj.get("mean"), obj.get("std")]
        for s in scores:
            row += [g["scores"].get(s, {}).get("mean"), g["scores"].get(s, {}).get("std")]
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _read_failures(results: Path, name: str) -> dict:
    path = _sweep_dir(results, name) / "failures.json"
    try:
        return read_json(path) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def _print_summary(summary: dict, stream=None) -> None:
    stream = stream or sys.stdout
    t = summary["trials"]
    planned = f" of {t['planned']}" if t["planned"] is not None else ""
    stopped = f", {t['interrupted']} interrupted (a restart resumes them)" if t.get("interrupted") else ""
    print(f"sweep {summary['sweep']}: {t['finished']}{planned} trials finished, {t['failed']} failed{stopped}; "
          f"objective {summary['objective']} (mean ± std over seeds)", file=stream)  # fmt: skip
    for g in summary["parameter_sets"]:
        obj = g["objective"]
        text = "-" if obj is None else f"{obj['mean']:.4f}" + ("" if obj["std"] is None else f" ± {obj['std']:.4f}")
        values = " ".join(f"{k}={_plain(v)}" for k, v in sorted(g["values"].items())) or "(base)"
        print(f"  {text:>17}  n={g['n']}  {values}", file=stream)
    if summary["best"]:
        b = summary["best"]
        print(f"best trial: {b['objective']:.4f}  {b['trial']}  (run {b['run']})", file=stream)
    for f in summary["failed"]:
        print(f"failed: {f['trial']}: {f['error']}", file=stream)


# ---------------------------------------------------------------- one trial (the subprocess)


def _trial_hash(sweep: str, trial: str) -> str:
    return hashlib.sha256(f"{sweep}\0{trial}".encode()).hexdigest()[:16]


def _watch_parent() -> None:
    """Kill this process group (this process and the compiled binary it runs) as soon as the parent is gone:
    a trial must not outlive the worker or client that started it (nor keep writing its run directory)."""
    parent = os.getppid()

    def watch():
        while True:
            if os.getppid() != parent:
                os.killpg(0, signal.SIGKILL)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _trial_main(spec: dict) -> int:
    """Run (or resume, or just report) one trial: the run of this sweep with this trial key, if any."""
    from .protocol import load_protocol
    from .runner import resume_run, run_protocol
    from .store import RunIndex

    if os.getpgrp() == os.getpid():  # started in its own session by an executor (not a test calling directly)
        _watch_parent()
    results = Path(spec["results"])
    lock_path = _sweep_dir(results, spec["sweep"]) / "locks" / f"{_trial_hash(spec['sweep'], spec['trial'])}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process on this trial (an orphan of a killed client): wait
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        with RunIndex(results) as index:
            index.sync()
            rows = index.records({"sweep": spec["sweep"], "trial": spec["trial"]})
        done = [r for r in rows if r["status"] == "finished"]
        if done:
            run_dir = results / done[-1]["id"]
        else:
            build_root, held = _claim_build_root(spec.get("build_root"), spec.get("worker", "0"))
            with held:
                if rows:  # interrupted (killed) or failed: finish it from its last checkpoint
                    run_dir = resume_run(results / rows[-1]["id"], build_root=build_root, progress=False)
                else:
                    protocol = load_protocol(spec["protocol"], spec["overrides"])
                    tags = {k: spec[k] for k in ("sweep", "trial", "values", "seed")}
                    run_dir = run_protocol(protocol, results, build_root=build_root, progress=False, tags=tags)
    print(run_dir, flush=True)
    return 0


def _worker_build_root(base, worker: str) -> Path:
    """A worker's own build folder: builds are compiled for their host, and runs of one build folder at once
    would share its run_args files (named by content) which each run deletes when it ends."""
    from .simulation import default_build_root

    return Path(base or default_build_root()) / "workers" / f"{socket.gethostname()}-{worker}"


def _claim_build_root(base, worker: str):
    """The worker's build folder and its lock, held while a trial runs there: a second sweep on this host
    with a worker of the same name takes ``<host>-<worker>.1`` (and so on) instead of sharing one folder."""
    root = _worker_build_root(base, worker)
    for k in itertools.count():
        candidate = root if k == 0 else root.with_name(f"{root.name}.{k}")
        candidate.mkdir(parents=True, exist_ok=True)
        handle = open(candidate / "in_use.lock", "a+")  # released by the caller's with
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return candidate, handle
        except BlockingIOError:
            handle.close()


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (``signum``) to a sweep's client or to a trial process: it stops, exit 128 + signum.
    From `run_sweep`, ``summary`` is the summary of the trials that finished (written as usual)."""

    def __init__(self, signum: int = signal.SIGINT, summary: dict | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.summary = int(signum), summary


#: Exit codes of a trial process that was stopped by SIGINT or SIGTERM (its run is marked interrupted).
INTERRUPTED_EXITS = (128 + signal.SIGINT, 128 + signal.SIGTERM)
#: Seconds a trial process has to mark its run interrupted after SIGTERM before its group gets SIGKILL.
STOP_GRACE_S = 15.0


class _TrialProcesses:
    """The trial subprocesses this process runs, and whether it is stopping: then none starts or is retried."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set = set()
        self.stopping = False

    def start(self, argv: list, **kwargs):
        """A started `subprocess.Popen`, or None once stopping."""
        with self.lock:
            if self.stopping:
                return None
            proc = subprocess.Popen(argv, **kwargs)
            self.live.add(proc)
            return proc

    def ended(self, proc) -> None:
        with self.lock:
            self.live.discard(proc)

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """Stop every trial: SIGTERM to its process (which marks its run interrupted, kills the compiled binary it
        runs and exits 143; the binary itself never gets SIGINT, which would end its chunk early as if done), then
        SIGKILL to the process group of each still there after ``grace`` seconds (one that is compiling)."""
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        for proc in procs:
            _signal_quietly(os.kill, proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            while proc.returncode is None and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)  # the thread running the trial may reap it first: then returncode is set
        for proc in procs:  # whatever is left of its group (a compiler, a binary)
            _signal_quietly(os.killpg, proc.pid, signal.SIGKILL)
        return len(procs)


def _signal_quietly(kill, pid: int, signum: int) -> None:
    try:
        kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


_TRIALS = _TrialProcesses()  # of this process, for callers that give none
_CLIENT_TRIALS: dict = {}  # on a Dask worker: {client token: its trials}, so that a client stops only its own
_CLIENT_TRIALS_LOCK = threading.Lock()


def _trials_of(client: str) -> _TrialProcesses:
    with _CLIENT_TRIALS_LOCK:
        return _CLIENT_TRIALS.setdefault(client, _TrialProcesses())


def run_trial_process(spec: dict, worker: str, retries: int = 1, trials: _TrialProcesses | None = None) -> dict:
    """Run one trial in a subprocess on this host; retried (resumed from its checkpoint) up to ``retries``
    times when the subprocess is killed by a signal, unless ``trials`` is stopping. Returns ``{"trial",
    "status", "run", "error", "scores", "seconds", "worker"}``; status is "finished", "failed" or "interrupted"
    (stopped by SIGINT or SIGTERM, or killed: a restart of the sweep resumes it)."""
    trials = trials if trials is not None else _TRIALS
    results = Path(spec["results"])
    if not results.is_dir():
        error = f"results folder {results} is not visible on {socket.gethostname()}: the workers need a shared one"
        return {"trial": spec["trial"], "status": "failed", "run": None, "scores": None, "seconds": 0.0,
                "worker": worker, "error": error}  # fmt: skip
    spec = {**spec, "worker": worker}  # the trial finds the worker's build folder (Brian2 is not imported here)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per worker
    start = time.perf_counter()
    for attempt in range(retries + 1):
        status = "failed"
        proc = trials.start([sys.executable, "-m", "brian_lcsnn.sweep", "trial", json.dumps(spec)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
        if proc is None:
            status, error = "interrupted", "the sweep was stopped before the trial started"
            break
        try:
            out, err = proc.communicate()
        finally:
            trials.ended(proc)
        if proc.returncode == 0:
            run_dir = Path(out.strip().splitlines()[-1])
            try:
                scores = read_json(run_dir / "scores.json") if (run_dir / "scores.json").exists() else {}
            except (OSError, ValueError):
                scores = {}
            return {"trial": spec["trial"], "status": "finished", "run": run_dir.name, "error": None, "scores": scores,
                    "seconds": time.perf_counter() - start, "worker": worker, "attempts": attempt + 1}  # fmt: skip
        lines = [line for line in err.strip().splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit code {proc.returncode}"
        if proc.returncode in INTERRUPTED_EXITS:
            status, error = "interrupted", f"stopped by {signal.Signals(proc.returncode - 128).name}"
            break
        if proc.returncode < 0:
            status, error = "interrupted", f"killed by signal {-proc.returncode}"
            if attempt < retries and not trials.stopping:
                logger.warning("trial %s: %s; retrying (resumes its run)", spec["trial"], error)
                continue
        break
    return {"trial": spec["trial"], "status": status, "run": None, "error": error, "scores": None,
            "seconds": time.perf_counter() - start, "worker": worker, "attempts": attempt + 1}  # fmt: skip


def _stop_trials(client: str, grace: float = STOP_GRACE_S) -> int:
    """On a Dask worker (``client.run``): stop the trials of this client as `_TrialProcesses.stop` does."""
    return _trials_of(client).stop(grace)


def _quiet_sigint() -> None:
    """On a LocalCluster's worker (``client.run``): a Ctrl-C to the client's process group reaches its workers too,
    which would die of it; the client stops their trials and closes them instead."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: None)


def _dask_trial(spec: dict, retries: int, client: str) -> dict:
    """The Dask task of a trial: the trial subprocess on this worker, with this worker's build folder."""
    from distributed import get_worker

    return run_trial_process(spec, str(get_worker().name), retries, _trials_of(client))


# ---------------------------------------------------------------- executors


class LocalExecutor:
    """Trial subprocesses on this machine, at most ``workers`` at once, each slot with its build folder."""

    def __init__(self, workers: int, build_root=None, retries: int = 1):
        from concurrent.futures import ThreadPoolExecutor

        self.workers, self.build_root, self.retries = workers, build_root, retries
        self.trials = _TrialProcesses()
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._free = list(range(workers))
        self._slots: dict = {}
        self.description = f"{workers} local worker{'s' if workers > 1 else ''}"

    def capacity(self) -> int:
        return self.workers

    def submit(self, spec: dict):
        slot = self._free.pop(0)
        future = self._pool.submit(run_trial_process, {**spec, "build_root": self.build_root}, str(slot), self.retries,
                                   self.trials)  # fmt: skip
        self._slots[future] = slot
        return future

    def wait_one(self, futures: list):
        """(future, result) of a finished trial, or None after half a second (the caller looks for a stop)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
        if not done:
            return None
        future = next(iter(done))
        self._free.append(self._slots.pop(future))
        return future, future.result()

    def stop_trials(self) -> None:
        """Stop the running trials (they return "interrupted"); none starts after this."""
        self.trials.stop()

    def close(self) -> None:
        self.trials.stop()  # none left after a sweep that ended; after an error, none outlives the client
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Trials as Dask tasks: on a scheduler (``tcp://HOST:PORT``, e.g. of a dask-jobqueue cluster) or on an
    in-process ``LocalCluster`` of ``local_cluster`` single-threaded worker processes. A task whose worker
    dies is rescheduled by Dask (``distributed.scheduler.allowed-failures``) and resumes the trial's run."""

    def __init__(self, scheduler: str | None = None, local_cluster: int | None = None, build_root=None,
                 retries: int = 1):  # fmt: skip
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise RunError("the Dask executor needs the 'distributed' package: pip install distributed") from None
        self.build_root = None if build_root is None else str(build_root)  # on the workers' paths too
        self.retries, self.cluster, self._futures = retries, None, []
        self.token = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"  # this client's trials on the workers
        if local_cluster:
            self.cluster = LocalCluster(n_workers=local_cluster, threads_per_worker=1, processes=True,
                                        dashboard_address=None)  # fmt: skip
            self.client = Client(self.cluster)
            self.client.run(_quiet_sigint)  # its workers share the client's process group: a Ctrl-C reaches them
            self.description = f"a Dask LocalCluster of {local_cluster} workers"
        else:
            try:
                self.client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise RunError(f"--scheduler {scheduler}: cannot connect ({err})") from None
            self.description = f"the Dask scheduler {scheduler}"

    def capacity(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        return max(1, sum(w.get("nthreads", 1) for w in workers))

    def submit(self, spec: dict):
        key = f"lcsnn-trial-{_trial_hash(spec['sweep'], spec['trial'])}-{time.monotonic_ns()}"
        future = self.client.submit(_dask_trial, {**spec, "build_root": self.build_root}, self.retries, self.token,
                                    key=key, pure=False)  # fmt: skip
        self._futures.append(future)
        return future

    def wait_one(self, futures: list):
        """(future, result) of a finished trial, or None after a second: workers may have joined (a Slurm job
        that started), so that the caller can give them trials, or the sweep was asked to stop."""
        from distributed import wait

        try:
            done = wait(futures, timeout=1, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            return None
        future = next(iter(done))
        try:
            return future, future.result()
        except Exception as err:  # e.g. KilledWorker: the trial failed, the sweep goes on
            return future, {"status": "failed", "run": None, "scores": None, "error": f"{type(err).__name__}: {err}",
                            "seconds": 0.0, "worker": None}  # fmt: skip

    def stop_trials(self) -> None:
        """Stop the trials on every worker (they return "interrupted"); none starts there after this."""
        self.client.run(_stop_trials, self.token)

    def close(self) -> None:
        if any(not f.done() for f in self._futures):  # an error in the client: its trials must not go on
            try:
                self.client.run(_stop_trials, self.token)
                self.client.cancel(self._futures)
            except Exception as err:  # closing anyway; say why the trials may not have stopped
                logger.warning("could not stop the trials on the Dask workers: %s: %s", type(err).__name__, err)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ---------------------------------------------------------------- the sweep


class _Progress:
    """done / running / failed, best so far and ETA on stderr: a tqdm bar refreshed in place on a terminal, else
    one line per finished trial."""

    def __init__(self, sweep: Sweep, total: int, done_before: int, enabled: bool, best=None, stream=None):
        self.sweep, self.total, self.enabled = sweep, total, enabled
        self.done_before, self.done, self.failed, self.running = done_before, 0, 0, 0
        self.best = best  # (objective, trial key)
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

            # the rate and ETA count this invocation's trials only (those done before are the initial count)
            self.bar = tqdm(total=total, initial=done_before, desc=f"sweep {sweep.name}", unit=" trials",
                            file=self.stream, smoothing=0, dynamic_ncols=True)  # fmt: skip

    def line(self) -> None:
        if not self.enabled:
            return
        finished = self.done_before + self.done
        best = f"best {self.best[0]:.4f} ({self.best[1]})" if self.best else "best -"
        if self.bar is not None:
            self.bar.update(finished + self.failed - self.bar.n)
            self.bar.set_postfix_str(f"{self.running} running, {self.failed} failed; {best}")
            return
        remaining = max(self.total - finished - self.failed, 0)
        elapsed = time.perf_counter() - self.start
        eta = f"{remaining * elapsed / self.done / 60:.1f} min" if self.done else "?"
        print(f"sweep {self.sweep.name}: {finished}/{self.total} done, {self.running} running, {self.failed} failed; "
              f"{best}; ETA {eta}", file=self.stream, flush=True)  # fmt: skip


def _planned(sweep: Sweep) -> list[Trial] | None:
    """The trials of a grid or random search within the budget (None for an adaptive search)."""
    method = sweep.search["method"]
    if method == "optuna":
        return None
    trials = grid_trials(sweep) if method == "grid" else random_trials(sweep)
    limit = sweep.budget["max_trials"]
    return trials[:limit] if limit else trials


def _claim(sweep: Sweep, results: Path):
    """The sweep's lock (one client per sweep) and its record: a restart must run the same base protocol."""
    folder = _sweep_dir(results, sweep.name)
    (folder / "locks").mkdir(parents=True, exist_ok=True)
    handle = open(folder / "locks" / "sweep.lock", "a+")  # held until the sweep ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RunError(f"sweep {sweep.name} in {results} is running in another process") from None
    record_path = folder / "sweep.json"
    record = {"name": sweep.name, "file": str(sweep.path), "protocol": str(sweep.protocol_path),
              "base_hash": sweep.base_hash(), "fixed": sweep.fixed, "sweep": sweep.raw}  # fmt: skip
    if record_path.exists():
        old = read_json(record_path)
        if old.get("base_hash") != record["base_hash"]:
            handle.close()
            raise RunError(f"{sweep.path}: sweep {sweep.name} in {results} ran another base protocol "
                           f"({old.get('protocol')} with {old.get('fixed')}); give this one another name")  # fmt: skip
    write_json(record_path, record)
    return handle


class _StopRequest:
    """While a sweep's client runs (main thread): the first SIGINT or SIGTERM is kept in ``signum`` and later ones
    are ignored; the sweep stops dispatching, stops its trials and workers, writes what it has and raises
    `Interrupted` (`check`) at a point where nothing is half-written."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._note) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _note(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        for signum, previous in self._old.items():
            signal.signal(signum, previous)
        return False

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


def run_sweep(sweep: Sweep, results=None, *, workers: int = 1, scheduler: str | None = None,
              local_cluster: int | None = None, build_root=None, retries: int = 1,
              progress: bool = True) -> dict:  # fmt: skip
    """Run a sweep's trials that have not finished yet and return its summary (`summarise`).

    Parameters
    ----------
    sweep : Sweep
        From `load_sweep`.
    results : Path, optional
        The results folder (default: `default_results_root`); with Dask it must be shared with the workers.
    workers : int
        Local worker processes (the default executor).
    scheduler, local_cluster
        Dask instead: a scheduler address, or an in-process LocalCluster of this many workers.
    build_root : Path, optional
        Where each worker keeps its builds (``<build_root>/workers/<host>-<worker>``); default: each
        worker's `default_build_root`.
    retries : int
        Re-runs (resumes) of a trial whose subprocess was killed, before it counts as interrupted.

    Raises `Interrupted` (a KeyboardInterrupt) after SIGINT or SIGTERM (in the main thread): the sweep stops
    dispatching, its running trials are stopped (their runs marked interrupted, resumed by the next start of
    the sweep), its workers or LocalCluster closed, and the summary of what finished is written.
    """
    results = Path(results if results is not None else default_results_root()).resolve()
    results.mkdir(parents=True, exist_ok=True)
    lock = _claim(sweep, results)
    executor = None
    with _StopRequest() as stop:
        try:
            if scheduler or local_cluster:
                executor = DaskExecutor(scheduler, local_cluster, build_root, retries)
            else:
                executor = LocalExecutor(workers, None if build_root is None else str(build_root), retries)
            logger.info("sweep %s on %s", sweep.name, executor.description)
            if sweep.search["method"] == "optuna":
                _run_optuna(sweep, results, executor, progress, stop)
            else:
                _run_list(sweep, results, executor, _planned(sweep), progress, stop)
        except Interrupted:
            pass  # its trials are stopped and recorded: the summary of what finished, then raised again below
        finally:
            if executor is not None:
                executor.close()
            lock.close()
        summary = summarise(results, sweep.name, sweep.objective, _planned(sweep))
    if stop.signum is not None:
        raise Interrupted(stop.signum, summary)
    return summary


def _spec(sweep: Sweep, results: Path, trial: Trial) -> dict:
    return {"sweep": sweep.name, "trial": trial.key, "values": trial.values, "seed": trial.seed,
            "protocol": str(sweep.protocol_path), "overrides": sweep.overrides(trial),
            "results": str(results)}  # fmt: skip


def _state(sweep: Sweep, results: Path) -> dict:
    """``{trial key: run}`` of the sweep's runs, the finished one where a trial has several."""
    state = {}
    for run in _sweep_runs(results, sweep.name):
        if run["trial"] not in state or run["status"] == "finished":
            state[run["trial"]] = run
    return state


def _execute(sweep: Sweep, results: Path, executor, trials: list[Trial], meter: _Progress, clock: _Clock,
             stop: _StopRequest) -> dict:  # fmt: skip
    """Run ``trials`` (none of them finished) keeping the executor's workers busy; records failures as they
    come. Returns ``{trial key: result}``. After a stop request, no trial starts, the running ones are stopped
    and collected, then `Interrupted` is raised."""
    failures = _read_failures(results, sweep.name)
    queue, running, out, report, stopped = list(trials), {}, {}, False, False
    while True:
        while queue and stop.signum is None and len(running) < executor.capacity() and not clock.expired():
            trial = queue.pop(0)
            running[executor.submit(_spec(sweep, results, trial))] = trial
        meter.running = len(running)
        if report:  # after the refill: "running" is what runs now
            meter.line()
            report = False
        if stop.signum is not None and not stopped:
            executor.stop_trials()  # they end as "interrupted" (their runs too) and are collected below
            stopped = True
        if not running:
            if queue and stop.signum is None:
                logger.warning("sweep %s: max_hours reached; %d trials not started", sweep.name, len(queue))
            break
        got = executor.wait_one(list(running))
        if got is None:  # nothing finished yet: look for new workers
            continue
        future, result = got
        trial = running.pop(future)
        out[trial.key] = result = {**result, "trial": trial.key}
        if result["status"] == "finished":
            meter.done += 1
            failures.pop(trial.key, None)
            value = objective_value(result["scores"], sweep.objective)
            if value is not None and (meter.best is None or value > meter.best[0]):
                meter.best = (value, trial.key)
        elif result["status"] == "interrupted":  # not a failure: the next start of the sweep resumes it
            if stop.signum is None:
                logger.warning("sweep %s: trial %s %s; a restart resumes it", sweep.name, trial.key, result["error"])
        else:
            meter.failed += 1
            failures[trial.key] = {"trial": trial.key, "values": trial.values, "seed": trial.seed,
                                   "error": result["error"], "run": result["run"],
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
            logger.warning("sweep %s: trial %s failed: %s", sweep.name, trial.key, result["error"])
        write_json(_sweep_dir(results, sweep.name) / "failures.json", failures)
        clock.save()
        report = stop.signum is None  # stopping: the one line that says how to resume, not trials ending
    clock.save()
    stop.check()
    return out


class _Clock:
    """The sweep's wall time over all its invocations, so that ``budget.max_hours`` counts a restarted sweep's
    earlier hours too; kept in ``sweeps/<name>/budget.json`` (``{"seconds": ...}``), saved as trials end."""

    def __init__(self, sweep: Sweep, results: Path):
        self.path = _sweep_dir(results, sweep.name) / "budget.json"
        try:
            self.before = float(read_json(self.path)["seconds"]) if self.path.exists() else 0.0
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise SweepError(f"{self.path}: not a budget file of this sweep ({err})") from None
        self.start = time.time()
        hours = sweep.budget["max_hours"]
        self.deadline = None if hours is None else self.start + hours * 3600 - self.before

    def expired(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def save(self) -> None:
        write_json(self.path, {"seconds": round(self.before + time.time() - self.start, 1)})


def _best_of(state: dict, objective: str):
    scored = [(objective_value(r["scores"], objective), key) for key, r in state.items() if r["status"] == "finished"]
    return max(((v, k) for v, k in scored if v is not None), default=None)


def _run_list(sweep: Sweep, results: Path, executor, planned: list[Trial], progress: bool,
              stop: _StopRequest) -> None:  # fmt: skip
    """Grid and random searches: every planned trial that has not finished, in order."""
    state = _state(sweep, results)
    todo = [t for t in planned if state.get(t.key, {}).get("status") != "finished"]
    meter = _Progress(sweep, len(planned), len(planned) - len(todo), progress, _best_of(state, sweep.objective))
    meter.line()
    clock = _Clock(sweep, results)
    _execute(sweep, results, executor, todo, meter, clock, stop)


def _run_optuna(sweep: Sweep, results: Path, executor, progress: bool, stop: _StopRequest) -> None:
    """Adaptive search: Optuna asks for as many parameter sets as there are workers, each runs with every
    seed, their mean objective is told back; repeated until ``search.n`` sets (or the budget) are done. The
    study lives in memory and is rebuilt on a restart from the sweep's finished runs in the index; parameter
    sets with unfinished runs are asked first, so their runs are resumed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    distributions = {axis.key: axis.distribution() for axis in sweep.axes}
    state = _state(sweep, results)
    groups: dict[str, dict] = {}
    for run in state.values():
        group = groups.setdefault(json.dumps(run["values"], sort_keys=True), {"values": run["values"], "runs": []})
        group["runs"].append(run)
    # a restarted sampler on the first seed would propose the first session's points again: go on from there
    seed = sweep.search["seed"] + len(groups)
    sampler = (optuna.samplers.CmaEsSampler(seed=seed) if sweep.search["sampler"] == "cmaes"
               else optuna.samplers.TPESampler(seed=seed))  # fmt: skip
    study = optuna.create_study(direction="maximize", sampler=sampler)
    resumed = 0
    for group in groups.values():
        if set(group["values"]) != set(distributions):
            continue  # from an older version of the sweep file
        done = [r for r in group["runs"] if r["status"] == "finished"]
        if len(done) == len(sweep.seeds):
            values = [objective_value(r["scores"], sweep.objective) for r in done]
            study.add_trial(optuna.trial.create_trial(params=group["values"], distributions=distributions,
                                                      value=_mean_or_none(values)) if None not in values else
                            optuna.trial.create_trial(params=group["values"], distributions=distributions,
                                                      state=optuna.trial.TrialState.FAIL))  # fmt: skip
        else:
            study.enqueue_trial(group["values"])  # asked first: its runs resume
            resumed += 1
    n_sets = sweep.search["n"]
    max_trials = sweep.budget["max_trials"]
    total = n_sets * len(sweep.seeds) if not max_trials else min(max_trials, n_sets * len(sweep.seeds))
    finished = sum(r["status"] == "finished" for r in state.values())
    meter = _Progress(sweep, total, finished, progress, _best_of(state, sweep.objective))
    meter.line()
    clock = _Clock(sweep, results)

    def asked() -> int:  # sets told or being run: an enqueued (WAITING) set to resume is still to be asked
        return sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)

    while asked() < n_sets and not clock.expired() and stop.signum is None:
        used = meter.done_before + meter.done + meter.failed
        batch = min(max(executor.capacity(), resumed), n_sets - asked())
        if max_trials:
            batch = min(batch, (max_trials - used) // len(sweep.seeds))
        if batch < 1:
            break
        resumed = 0
        batch_trials = [study.ask(distributions) for _ in range(batch)]
        tidy = {axis.key: axis.tidy for axis in sweep.axes}
        sets = [{k: tidy[k](v) for k, v in t.params.items()} for t in batch_trials]
        trials = [Trial(values, seed) for values in sets for seed in sweep.seeds]
        todo = [t for t in dict(zip((t.key for t in trials), trials, strict=True)).values()  # a repeat runs once
                if state.get(t.key, {}).get("status") != "finished"]  # fmt: skip
        out = _execute(sweep, results, executor, todo, meter, clock, stop)
        state = _state(sweep, results)
        for t, values in zip(batch_trials, sets, strict=True):
            runs = [state.get(Trial(values, seed).key) for seed in sweep.seeds]
            values = [objective_value(r["scores"], sweep.objective) if r and r["status"] == "finished" else None
                      for r in runs]  # fmt: skip
            if None in values:
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            else:
                study.tell(t, _mean_or_none(values))
        if len(out) < len(todo):  # the deadline stopped the batch
            break


def _mean_or_none(values):
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------- command line


def register(subparsers) -> None:
    """Add ``lcsnn sweep FILE`` (with ``set_defaults(handler=...)``)."""
    cmd = subparsers.add_parser("sweep", help="run a sweep: many runs over a grid, random or adaptive search, seeds")
    cmd.add_argument("sweep", help="the sweep file (YAML)")
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default: 1)")
    where.add_argument("--local-cluster", type=int, metavar="N", help="an in-process Dask LocalCluster of N workers")
    where.add_argument("--scheduler", metavar="ADDR", help="a Dask scheduler, e.g. tcp://HOST:8786")
    where.add_argument("--summary", action="store_true", help="run nothing: the summary from the index")
    cmd.add_argument("--results", type=Path, help="results folder (default: $BRIAN_LCSNN_RESULTS or ./results)")
    cmd.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a base protocol value in every trial, e.g. --set phases.0.n=500")  # fmt: skip
    cmd.add_argument("--retries", type=int, default=1, help="re-runs of a trial whose process was killed (default 1)")
    cmd.add_argument("--quiet", action="store_true", help="no progress lines")
    cmd.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args) -> int:
    if args.workers < 1 or (args.local_cluster is not None and args.local_cluster < 1) or args.retries < 0:
        raise RunError("--workers and --local-cluster take an integer >= 1, --retries one >= 0")
    sweep = load_sweep(args.sweep, args.overrides)
    results = Path(args.results if args.results is not None else default_results_root())
    if args.summary:
        if not results.is_dir():
            raise RunError(f"{results}: no such results folder")
        summary = summarise(results, sweep.name, sweep.objective, _planned(sweep))
    else:
        try:
            summary = run_sweep(sweep, results, workers=args.workers, scheduler=args.scheduler,
                                retries=args.retries, local_cluster=args.local_cluster,
                                progress=not args.quiet)  # fmt: skip
        except Interrupted as stop:
            done = stop.summary["trials"]
            of = f" of {done['planned']}" if done["planned"] is not None else ""
            print(f"sweep {sweep.name} interrupted ({signal.Signals(stop.signum).name}): {done['finished']}{of} "
                  f"trials finished; resume with: {_resume_command(args)}", file=sys.stderr)  # fmt: skip
            return 128 + stop.signum
        _figures(sweep, results)
    _print_summary(summary)
    print(_sweep_dir(results, sweep.name) / "summary.json")
    return 1 if summary["failed"] or summary["trials"]["interrupted"] else 0


def _resume_command(args) -> str:
    """The ``lcsnn sweep`` command line that goes on with this sweep (same file, results, executor, --set)."""
    import shlex

    results = Path(args.results if args.results is not None else default_results_root()).resolve()
    words = ["lcsnn", "sweep", str(Path(args.sweep).resolve()), "--results", str(results)]
    if args.local_cluster:
        words += ["--local-cluster", str(args.local_cluster)]
    elif args.scheduler:
        words += ["--scheduler", args.scheduler]
    elif args.workers != 1:
        words += ["--workers", str(args.workers)]
    if args.retries != 1:
        words += ["--retries", str(args.retries)]
    for override in args.overrides:
        words += ["--set", override]
    return shlex.join(words)


def _figures(sweep: Sweep, results: Path) -> None:
    """The heatmap (+ CSV) and 3-D HTML of a two-axis sweep into ``<results>/sweeps/<name>/figures/``, drawn by
    `brian_lcsnn.compare` (``lcsnn plot --runs sweep=NAME --x A --y B``) where it exists; else the command is
    printed. A figure that cannot be drawn is a warning: the sweep's runs and summary are what counts."""
    numeric = [a.key for a in sweep.axes if a.values is None or all(isinstance(v, int | float) for v in a.values)]
    if sweep.search["method"] != "grid" or len(numeric) != 2:
        return
    command = f"lcsnn plot --results {results} --runs sweep={sweep.name} --x {numeric[0]} --y {numeric[1]}"
    try:
        from .compare import plot_across_runs
    except ImportError:
        print(f"figures: {command}", file=sys.stderr)
        return
    try:
        written, _ = plot_across_runs(results, {"sweep": sweep.name}, x=numeric[0], y=numeric[1],
                                      out=_sweep_dir(results, sweep.name) / "figures")  # fmt: skip
    except Exception as err:  # the figures are an extra; say why they are missing
        logger.warning(
            "figures of sweep %s not drawn (%s: %s); later: %s", sweep.name, type(err).__name__, err, command
        )
        return
    for path in written:
        print(f"figure: {path}", file=sys.stderr)


def _main(argv: list[str]) -> int:
    """``python -m brian_lcsnn.sweep trial SPEC_JSON``: one trial, for the executors."""
    parser = argparse.ArgumentParser(prog="python -m brian_lcsnn.sweep")
    parser.add_argument("command", choices=("trial",))
    parser.add_argument("spec", help="the trial as JSON")
    args = parser.parse_args(argv)
    from .cli import _configure_logging
    from .errors import LcsnnError
    from .interrupts import interruptible

    _configure_logging(False)
    try:
        # SIGINT or SIGTERM (the executor stopping it) as for lcsnn run: the run is marked interrupted
        with interruptible():
            return _trial_main(json.loads(args.spec))
    except LcsnnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)  # Interrupted or RunInterrupted
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
