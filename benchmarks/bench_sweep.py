"""Trials per hour of a sweep on one worker and on a 2-worker Dask LocalCluster, and the ratio.

    python benchmarks/bench_sweep.py                                  # sweeps/lc25_grid.yaml, all 36 trials
    python benchmarks/bench_sweep.py --max-trials 4 --set phases.0.n=200 --set phases.1.n=200 --set phases.2.n=200

Each configuration runs the same trials into a fresh results folder. The compiled builds of every worker are
made first (compile seconds printed separately), so the timings are trials only; the clusters are started
before the clock starts. Prints one JSON line per configuration and one with the ratio. The machine is
shared: run it when it is quiet, and compare ratios taken in the same go.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from brian_lcsnn.protocol import load_protocol
from brian_lcsnn.runner import make_simulator
from brian_lcsnn.simulation import default_build_root
from brian_lcsnn.sweep import _planned, _worker_build_root, load_sweep, run_sweep


def warm_builds(sweep, workers: int, build_root: Path) -> float:
    """Compile (or reuse) every structure of the planned trials in every worker's build folder; seconds."""
    start = time.perf_counter()
    done = set()
    for trial in _planned(sweep):
        protocol = load_protocol(sweep.protocol_path, sweep.overrides(trial))
        for worker in range(workers):
            sim = make_simulator(protocol, build_root=_worker_build_root(build_root, str(worker)))
            if (worker, sim.key) not in done:
                sim.prepare()
                done.add((worker, sim.key))
    return time.perf_counter() - start


def timed_sweep(sweep, workers: int, build_root: Path, out: Path) -> dict:
    from distributed import LocalCluster

    results = Path(tempfile.mkdtemp(prefix=f"bench_sweep_{workers}w_", dir=out))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        start = time.perf_counter()
        summary = run_sweep(sweep, results, scheduler=cluster.scheduler_address, build_root=build_root, progress=False)
        wall = time.perf_counter() - start
    finished = summary["trials"]["finished"]
    return {"workers": workers, "trials": finished, "failed": len(summary["failed"]), "wall_seconds": round(wall, 1),
            "trials_per_hour": round(finished / wall * 3600, 1), "results": str(results)}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default=str(Path(__file__).parents[1] / "sweeps" / "lc25_grid.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base protocol value of every trial")  # fmt: skip
    parser.add_argument("--max-trials", type=int, help="only the first N trials of the sweep")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default: 1 2)")
    parser.add_argument("--build", type=Path, default=None, help="build root (default: the usual one)")
    parser.add_argument("--out", type=Path, default=None, help="where the fresh results folders go (default: /tmp)")
    args = parser.parse_args()

    sweep = load_sweep(args.sweep, args.overrides)
    if args.max_trials:
        sweep.budget["max_trials"] = args.max_trials
    build_root = args.build or default_build_root()
    compile_seconds = warm_builds(sweep, max(args.workers), build_root)
    head = {"sweep": sweep.name, "trials": len(_planned(sweep)), "compile_seconds": round(compile_seconds, 1)}
    print(json.dumps(head), flush=True)
    rows = []
    for workers in args.workers:
        rows.append(timed_sweep(sweep, workers, build_root, args.out))
        print(json.dumps(rows[-1]), flush=True)
    if len(rows) >= 2:
        print(json.dumps({"ratio": round(rows[-1]["trials_per_hour"] / rows[0]["trials_per_hour"], 2),
                          "of": f"{rows[-1]['workers']} workers / {rows[0]['workers']} worker(s)"}))  # fmt: skip


if __name__ == "__main__":
    main()
