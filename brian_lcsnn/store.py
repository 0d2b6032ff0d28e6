"""An index of the run directories of a results folder (SQLite), and the commands that browse it.

``<results>/index.sqlite`` holds one flat row per run (`COLUMNS`: ``run.json``, ``protocol.yaml`` and the last
test phase of ``scores.json`` summarised, the sweep and trial of run.json's ``tags``, the whole protocol as JSON
in ``params_json``). It is only a cache:
`RunIndex.rebuild` recreates it from the directories, `RunIndex.sync` re-reads just the runs whose ``run.json``
or ``scores.json`` changed (size and mtime are kept in the row) and drops vanished ones. WAL mode and a busy
timeout let several processes write at once. A run whose files cannot be read is left out with a warning
naming the file. Commands (`register`): ``lcsnn runs``, ``lcsnn show RUN``, ``lcsnn delete RUN``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path

import yaml

from .readout import VOTING_METHODS, headline_test_phase
from .results import RunError, default_results_root, is_running, read_json, read_run_file, run_status

__all__ = [
    "INDEX_NAME",
    "COLUMNS",
    "DEFAULT_COLUMNS",
    "RunIndex",
    "list_runs",
    "parse_filters",
    "register",
    "resolve_run",
]

logger = logging.getLogger(__name__)

INDEX_NAME = "index.sqlite"
SCHEMA_VERSION = 2  # a different version in an existing index: the table is recreated (and filled by sync)
_TEXT = {"id", "name", "status", "started", "finished", "architecture", "yy_init", "yy_pairs", "device",
         "best_voting_method", "sweep", "trial", "params_json"}  # fmt: skip
_REAL = {"mean_weight", "c_w", "wall_seconds", "best_voting", "best_voting_error", "linear"}
#: The row's columns (stable names) with their SQLite types.
COLUMNS = {
    name: "TEXT" if name in _TEXT else "REAL" if name in _REAL else "INTEGER"
    for name in ("id name status seed started finished architecture n_filters kernel_size stride mean_weight c_w "
                 "yy_init yy_pairs device y_neurons xy_synapses yy_synapses total_parameters train_samples "
                 "wall_seconds best_voting best_voting_method best_voting_error linear test_n sweep trial "
                 "params_json").split()
}  # fmt: skip
DEFAULT_COLUMNS = ("id", "name", "status", "architecture", "n_filters", "kernel_size", "mean_weight", "c_w",
                   "train_samples", "best_voting", "linear")  # fmt: skip
_QUOTED = ", ".join(f'"{n}"' for n in COLUMNS)
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _signature(run_dir: Path) -> str | None:
    """``size:mtime_ns`` of run.json and scores.json (the files a run rewrites); None without a run.json."""
    parts = []
    for name in ("run.json", "scores.json"):
        try:
            st = (run_dir / name).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            if name == "run.json":
                return None
            parts.append("-")
    return "/".join(parts)


def _mapping(value, what: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a mapping, got {type(value).__name__}")
    return value


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _scalar(value):
    """A value SQLite stores as it is (bool as int); anything else (a foreign value, a huge int) as text."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return str(value)
    return value if isinstance(value, (int, float, str, type(None))) else json.dumps(value, default=str)


def _read_row(run_dir: Path) -> dict | None:
    """The flat row of one run directory, or None (and a warning naming the file) if a file cannot be read."""
    current = run_dir / "run.json"
    try:
        signature = _signature(run_dir)
        info = _mapping(read_json(current), "run.json")
        if not {"id", "status"} <= info.keys():
            raise ValueError("not a run.json of brian_lcsnn (no 'id' or 'status')")
        phases = info.get("phases") or []
        if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
            raise ValueError("'phases' is not a list of mappings")
        current = run_dir / "protocol.yaml"
        protocol = _mapping(yaml.load(current.read_text(), Loader=_Loader), "protocol.yaml")
        network = _mapping(protocol.get("network") or {}, "network")
        current = run_dir / "scores.json"
        scores = _mapping(read_json(current), "scores.json") if current.exists() else {}
        for phase, methods in scores.items():
            for method, score in _mapping(methods, phase).items():
                _mapping(score, f"{phase}.{method}")
        current = run_dir / "run.json"
        sizes = info["sizes"] if isinstance(info.get("sizes"), dict) else {}
        row = {key: info.get(key) for key in ("name", "status", "seed", "started", "finished", "device")}
        row["name"] = protocol.get("name") if row["name"] is None else row["name"]
        row["seed"] = protocol.get("seed") if row["seed"] is None else row["seed"]
        for key in ("architecture", "n_filters", "kernel_size", "stride", "mean_weight", "c_w", "yy_init", "yy_pairs"):
            row[key] = network.get(key)
        row.update({key: sizes.get(key) for key in ("y_neurons", "xy_synapses", "yy_synapses", "total_parameters")})
        row["train_samples"] = int(sum(_number(p.get("n")) or 0 for p in phases if p.get("type") == "train"))
        row["wall_seconds"] = round(sum(_number(p.get("wall_seconds")) or 0.0 for p in phases), 3)
        current = run_dir / "scores.json"
        last = scores[headline_test_phase(scores)] if scores else {}  # scores.json keeps phase order
        voting = [(m, last[m]) for m in VOTING_METHODS if _number(last.get(m, {}).get("accuracy")) is not None]
        method, best = max(voting, key=lambda item: _number(item[1]["accuracy"]), default=(None, {}))
        row.update(best_voting=best.get("accuracy"), best_voting_method=method, best_voting_error=best.get("error"),
                   linear=last.get("linear", {}).get("accuracy"))  # fmt: skip
        row["test_n"] = next((s["n"] for s in last.values() if s.get("n") is not None), None)
        current = run_dir / "protocol.yaml"
        tags = info.get("tags") if isinstance(info.get("tags"), dict) else {}
        row["sweep"], row["trial"] = tags.get("sweep"), tags.get("trial")  # a sweep's runs (brian_lcsnn.sweep)
        row["params_json"] = json.dumps(protocol, default=str)
    except Exception as err:  # a bad run directory is reported, never fatal
        logger.warning("%s: cannot be read (%s: %s); run skipped", current, type(err).__name__, err)
        return None
    return {"id": run_dir.name, **{k: _scalar(v) for k, v in row.items()}, "signature": signature}


def _lookup(protocol, dotted: str):
    """The value at a dotted path (list items by index); KeyError if there is none."""
    for part in dotted.split("."):
        if isinstance(protocol, dict) and part in protocol:
            protocol = protocol[part]
        elif isinstance(protocol, list) and part.isdigit() and int(part) < len(protocol):
            protocol = protocol[int(part)]
        else:
            raise KeyError(dotted)
    return protocol


def _text(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return json.dumps(value, default=str) if isinstance(value, (dict, list)) else str(value)


def _matches(value, wanted) -> bool:
    """Numbers compare as numbers when both sides parse as numbers, everything else as text."""
    a, b = _text(value), _text(wanted)
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return x == y or (math.isnan(x) and math.isnan(y))
    return a == b


@contextmanager
def _transaction(db: sqlite3.Connection):
    """``BEGIN IMMEDIATE`` (takes the write lock up front, waiting up to the busy timeout), COMMIT or ROLLBACK."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class RunIndex:
    """The index ``<root>/index.sqlite`` of the run directories (subfolders with a run.json) under ``root``.

    Parameters
    ----------
    root : Path
        The results folder (RunError if missing). A damaged index file is recreated; where none can be
        written (a read-only archive) an in-memory index is used, with a warning.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise RunError(f"{self.root}: no such results folder")
        self.path = self.root / INDEX_NAME
        try:
            try:
                self._db = self._open(self.path)
            except sqlite3.DatabaseError as err:
                if type(err) is not sqlite3.DatabaseError:  # OperationalError (locked, read-only): not damaged
                    raise
                logger.warning("%s: damaged (%s); recreated from the run directories", self.path, err)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._db = self._open(self.path)
        except sqlite3.Error as err:
            logger.warning("%s: cannot be written (%s); using an in-memory index", self.path, err)
            self._db = self._open(":memory:")

    @staticmethod
    def _open(path) -> sqlite3.Connection:
        db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)  # transactions are explicit
        try:
            for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL"):
                db.execute(f"PRAGMA {pragma}")
            if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                with _transaction(db):
                    if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:  # not done by another
                        db.execute("DROP TABLE IF EXISTS runs")
                        columns = ", ".join(f'"{n}" {t}' for n, t in COLUMNS.items())
                        db.execute(f"CREATE TABLE runs ({columns}, signature TEXT, PRIMARY KEY (id))")
                        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, rows: list[dict], delete=(), clear: bool = False) -> None:
        names = [*COLUMNS, "signature"]
        sql = f"INSERT OR REPLACE INTO runs VALUES ({', '.join('?' * len(names))})"
        with _transaction(self._db):
            if clear:
                self._db.execute("DELETE FROM runs")
            self._db.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in delete])
            self._db.executemany(sql, [[row[n] for n in names] for row in rows])

    def _run_dirs(self) -> list[Path]:
        """The run directories (others are logged at INFO level and ignored)."""
        dirs = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (path / "run.json").is_file():
                dirs.append(path)
            else:
                logger.info("%s: no run.json, not a run directory; skipped", path)
        return dirs

    def rebuild(self) -> int:
        """Drop every row and index every run directory under the root again; returns the number indexed."""
        rows = [row for row in map(_read_row, self._run_dirs()) if row]
        self._write(rows, clear=True)
        return len(rows)

    def sync(self) -> None:
        """Re-read the runs whose run.json or scores.json changed since indexed; drop rows of vanished runs."""
        known = dict(self._db.execute("SELECT id, signature FROM runs").fetchall())
        present, rows, bad = set(), [], []
        for run_dir in self._run_dirs():
            present.add(run_dir.name)
            if known.get(run_dir.name) != _signature(run_dir):
                row = _read_row(run_dir)
                if row:
                    rows.append(row)
                else:
                    bad.append(run_dir.name)
        gone = [i for i in known if i not in present] + [i for i in bad if i in known]
        if rows or gone:
            self._write(rows, delete=gone)

    def records(self, filters: dict | None = None, sort: str | None = None, descending=False) -> list[dict]:
        """The rows as dicts, as `frame` (without pandas)."""
        cursor = self._db.execute(f"SELECT {_QUOTED} FROM runs ORDER BY id")
        records = [dict(zip(COLUMNS, values, strict=True)) for values in cursor]
        for key, wanted in (filters or {}).items():
            if key in COLUMNS:
                records = [r for r in records if _matches(r[key], wanted)]
                continue
            values = []
            for r in records:
                try:
                    values.append((r, _lookup(json.loads(r["params_json"]), key)))
                except (KeyError, TypeError, ValueError):
                    pass
            if records and not values:
                raise RunError(f"unknown filter key {key!r}: neither a column nor a protocol key of any run")
            records = [r for r, value in values if _matches(value, wanted)]
        if sort is not None:
            if sort not in COLUMNS:
                raise RunError(f"unknown sort column {sort!r}; columns: {', '.join(COLUMNS)}")
            groups = ([], [], [])  # numbers, then text, then runs without a value (last either way)
            for r in records:
                groups[2 if r[sort] is None else 1 if isinstance(r[sort], str) else 0].append(r)
            groups[0].sort(key=lambda r: r[sort], reverse=descending)
            groups[1].sort(key=lambda r: r[sort], reverse=descending)
            records = [r for group in groups for r in group]
        return records

    def frame(self, filters: dict | None = None, sort: str | None = None, descending=False):
        """The indexed runs as a pandas DataFrame, one row per run, the columns of `COLUMNS`, in id order.

        Parameters
        ----------
        filters : dict, optional
            ``{key: value}``: ``key`` a column or a dotted path into the protocol (``parameters.neuron.tau_m``,
            ``phases.0.n``); values compare as numbers when both sides parse as numbers, else as text.
            RunError for a key that is neither a column nor in any run's protocol.
        sort : str, optional
            The column to sort by (runs without a value last); RunError for an unknown one.
        descending : bool
            Sort in descending order.
        """
        import pandas as pd

        return pd.DataFrame.from_records(self.records(filters, sort, descending), columns=list(COLUMNS))

    def find(self, run_id_or_prefix: str) -> Path:
        """The run directory with this id, else the only one whose id starts with it; RunError if none or many."""
        ids = [p.name for p in self._run_dirs()]
        matches = [run_id_or_prefix] if run_id_or_prefix in ids else [i for i in ids if i.startswith(run_id_or_prefix)]
        if len(matches) == 1 and run_id_or_prefix:
            return self.root / matches[0]
        if len(matches) > 1:
            raise RunError(f"{run_id_or_prefix!r} is ambiguous in {self.root}: {', '.join(matches)}")
        raise RunError(f"no run {run_id_or_prefix!r} in {self.root}")

    def delete(self, run_id: str) -> Path:
        """Remove the run directory ``<root>/<run_id>`` (one with a run.json) and its row; returns its path."""
        path = self.root / run_id
        if run_id and Path(run_id).name == run_id and run_id != ".." and (path / "run.json").is_file():
            path.unlink() if path.is_symlink() else shutil.rmtree(path)  # a linked run: the link only
        elif self._db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise RunError(f"no run {run_id!r} in {self.root}")
        self._write([], delete=(run_id,))
        logger.info("deleted %s", path)
        return path


def resolve_run(run: str | Path, results=None) -> Path:
    """The run directory that every command taking a run accepts: a path to one (a folder with a run.json),
    else a run id or a unique prefix of one in the results folder; `RunError` if none or several."""
    path = Path(run)
    if (path / "run.json").is_file():
        return path
    if path.is_dir() and (path / "protocol.yaml").is_file():
        raise RunError(f"{path}: not a run directory (no run.json)")
    with RunIndex(Path(results) if results is not None else default_results_root()) as index:
        return index.find(str(run))


def list_runs(root=None, **filters):
    """The runs of a results folder as a DataFrame (the index synced first); ``filters`` as in `RunIndex.frame`,
    dotted protocol keys through a dict: ``list_runs(**{"parameters.neuron.tau_m": "25 ms"})``."""
    with RunIndex(Path(root) if root is not None else default_results_root()) as index:
        index.sync()
        return index.frame(filters or None)


# ---------------------------------------------------------------- command line


def register(subparsers) -> None:
    """Add the sub-commands ``runs``, ``show`` and ``delete``, each with ``set_defaults(handler=f(args) -> int)``."""
    results = {"type": Path, "help": "results folder (default: $BRIAN_LCSNN_RESULTS or ./results)"}
    runs = subparsers.add_parser("runs", help="list the runs of the results folder")
    runs.add_argument("--results", **results)
    runs.add_argument("--filter", dest="filters", action="append", default=[], metavar="KEY=VALUE",
                      help="keep runs whose column or (dotted) protocol key equals VALUE; repeatable")  # fmt: skip
    runs.add_argument("--sweep", metavar="NAME", help="only the runs of this sweep (--filter sweep=NAME)")
    runs.add_argument("--sort", metavar="COLUMN", help="sort by a column")
    runs.add_argument("--desc", action="store_true", help="sort in descending order")
    fmt = runs.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON (all columns, or --columns)")
    fmt.add_argument("--csv", action="store_true", help="print CSV (all columns, or --columns)")
    runs.add_argument("--columns", help=f"comma-separated columns (table default: {','.join(DEFAULT_COLUMNS)})")
    runs.add_argument("--rebuild", action="store_true", help="rebuild the index from the run directories")
    runs.set_defaults(handler=_cmd_runs)
    for name, text in (("show", "a run's details and scores"), ("delete", "delete a run directory")):
        cmd = subparsers.add_parser(name, help=text)
        cmd.add_argument("run", help="the run directory, or a run id (or unique prefix) in the results folder")
        cmd.add_argument("--results", **results)
        if name == "show":
            cmd.add_argument("--json", action="store_true", help="print JSON")
        else:
            cmd.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        cmd.set_defaults(handler=_cmd_show if name == "show" else _cmd_delete)


def _index(args) -> RunIndex:
    return RunIndex(args.results if args.results is not None else default_results_root())


def _cell(column: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if column in ("best_voting", "best_voting_error", "linear") else f"{value:g}"
    return "-" if value is None else str(value)


def parse_filters(items, option: str = "--filter") -> dict:
    """``["KEY=VALUE", ...]`` (command-line filters) as ``{key: value}``; RunError naming the bad item."""
    filters = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunError(f"{option} {item!r}: expected KEY=VALUE")
        filters[key.strip()] = value.strip()
    return filters


def _cmd_runs(args) -> int:
    filters = parse_filters(args.filters)
    if args.sweep is not None:
        filters["sweep"] = args.sweep
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    if unknown := [c for c in columns or () if c not in COLUMNS]:
        raise RunError(f"--columns: unknown column(s) {', '.join(unknown)}; columns: {', '.join(COLUMNS)}")
    with _index(args) as index:
        index.rebuild() if args.rebuild else index.sync()
        records = index.records(filters, args.sort, args.desc)
    for r in records:  # run.json of a killed run still says running: its lock tells
        r["status"] = run_status(index.root / r["id"], r)
    if args.json or args.csv:
        records = [{c: r[c] for c in columns or COLUMNS} for r in records]
        if args.csv:
            writer = csv.DictWriter(sys.stdout, fieldnames=columns or list(COLUMNS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(records)
            return 0
        for r in records:  # the protocol as an object, not a string in a string
            if "params_json" in r:
                r["params_json"] = json.loads(r["params_json"])
        print(json.dumps(records, indent=2))
        return 0
    if not columns and args.sweep is not None:  # the runs of a sweep differ by their trial
        columns = [*DEFAULT_COLUMNS[:3], "seed", "trial", *DEFAULT_COLUMNS[3:]]
    columns = columns or list(DEFAULT_COLUMNS)
    table = [columns] + [[_cell(c, r[c]) for c in columns] for r in records]
    widths = [max(len(row[k]) for row in table) for k in range(len(columns))]
    right = [c != "id" and all(r[c] is None or isinstance(r[c], (int, float)) for r in records) for c in columns]
    for row in table:
        print("  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(row, widths, right, strict=True)).rstrip())
    print(f"{len(records)} run(s) in {index.root}", file=sys.stderr)
    return 0


def _cmd_show(args) -> int:
    path = resolve_run(args.run, args.results)
    info = read_run_file(path / "run.json")
    scores = read_run_file(path / "scores.json") if (path / "scores.json").exists() else {}
    info = {**info, "status": run_status(path, info)}
    if args.json:
        print(json.dumps({"path": str(path), "run": info, "scores": scores}, indent=2, default=str))
        return 0
    for key in ("id", "name", "status", "seed", "device", "float", "threads", "started", "finished", "error"):
        if info.get(key) is not None:
            print(f"{key:>10}: {info[key]}")
    for key in ("sizes", "dataset"):
        if isinstance(info.get(key), dict):
            print(f"{key:>10}: " + ", ".join(f"{k}={v}" for k, v in info[key].items()))
    phases = info.get("phases") if isinstance(info.get("phases"), list) else []
    for p in (p for p in phases if isinstance(p, dict)):
        timing = f" {p['wall_seconds']} s, {p.get('samples_per_second')} samples/s" if "wall_seconds" in p else ""
        what = f"n={p['n']}" if "n" in p else p.get("projection")
        print(f"{'phase':>10}: {p.get('name')} ({p.get('type')}, {what}){timing}")
    for phase, methods in scores.items():
        for method, s in methods.items() if isinstance(methods, dict) else ():
            acc, err, n = (s.get(k) if isinstance(s, dict) else None for k in ("accuracy", "error", "n"))
            acc, err = (math.nan if _number(v) is None else float(v) for v in (acc, err))
            print(f"{phase:>10} {method:>14}: {acc:.4f} ± {err:.4f} (n={n})")
    print(path)
    return 0


def _cmd_delete(args) -> int:
    path = resolve_run(args.run, args.results)
    if is_running(path):  # its process holds run.lock: deleting would pull the folder from under it
        raise RunError(f"{path}: is being run by a live process; stop it first (its run.lock is held)")
    with RunIndex(path.parent) as index:
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"not deleted: {path} (stdin is not a terminal; confirm with --yes)", file=sys.stderr)
                return 1
            try:
                answer = input(f"delete {path}? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print(f"not deleted: {path}", file=sys.stderr)
                return 1
        index.delete(path.name)
    print(f"deleted {path}")
    return 0
