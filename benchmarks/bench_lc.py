"""Training and inference speed (samples/s) of LC networks against the hand-written limit, measured in one go.

    python benchmarks/bench_lc.py --filters 25 100 --samples 1000 500 --repeat 3
    python benchmarks/bench_lc.py --filters 1000 --samples 60 --warm 50 --float float64
    python benchmarks/bench_lc.py --filters 100 --samples 500 --thesis-row protocols/thesis/lc100_k12.yaml

For every network (``--filters``) and precision (``--float``) it measures the package (C++ standalone, one
thread: `Simulator.run_chunk` of ``--samples`` training samples, then of as many inference samples, from the
state after ``--warm`` training samples) and the limit, the hand-written single-threaded C++ program of the
same network (``../shared/bench/limit/lcsnn_limit.cpp``, compiled with its README's g++ flags into
``~/.cache/brian_lcsnn/limit/<hash of source and flags>/``, or a prebuilt binary given with ``--limit``), its
``bench`` command with the same samples, warm-up, mean_weight and c_w. The two alternate in every one of
the ``--repeat`` rounds (package train, limit train + inference, package inference), so both see the same
machine load; the medians are printed. The limit's input, the 50,000 MNIST training images' 20x20 centre
crops as raw uint8, is written once from the package's own data loader.

Prints one JSON line per (network, float) with both figures and the ratios package / limit, and a table on
stderr at the end. ``--thesis-row PROTOCOL`` also times ``lcsnn run PROTOCOL`` end to end with a warm build
(into a scratch results folder) and prints its samples / wall next to the limit's training rate. The machine
is shared and noisy: only ratios taken side by side mean anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LIMIT_SOURCE = REPO.parent / "shared" / "bench" / "limit"
LIMIT_SOURCE_FILE = "lcsnn_limit.cpp"
#: the g++ flags of ../shared/bench/limit/README.md (-ffp-contract=off keeps its results exact)
LIMIT_CXXFLAGS = ("-std=c++17", "-O3", "-march=native", "-ffp-contract=off")
LIMIT_PRECISION = {"float64": "f64", "float32": "f32"}
IMAGES_FILE = "mnist_train_crop20.u8"
DEFAULT_SAMPLES = {25: 500, 100: 500, 1000: 60}  # per network when --filters / --samples are not given


class BenchError(Exception):
    """Bad input (exit code 2); the message is one line naming what and where."""

    code = 2


class StepFailed(BenchError):
    """A step that failed on good input (a compile, the limit, ``lcsnn run``): exit code 1."""

    code = 1


def thesis_parameters(n_filters: int) -> tuple[float, float]:
    """mean_weight and c_w of the thesis's LC networks (protocols/thesis: LC 25 0.46 / -100, else 0.32 / -50)."""
    return (0.32, -50.0) if n_filters >= 100 else (0.46, -100.0)


# -- the limit program -----------------------------------------------------------------------------------------
def limit_cache_dir() -> Path:
    from brian_lcsnn.data import default_cache_dir

    return default_cache_dir() / "limit"


def limit_build_context() -> str:
    """What else the binary depends on: the flags, the compiler, and the CPU (-march=native)."""
    try:
        compiler = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    except OSError:
        raise BenchError(
            "g++: not found (the limit is compiled with g++; or give a binary with --limit PATH)"
        ) from None
    try:
        cpu = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.machine()
    return "\n".join((" ".join(LIMIT_CXXFLAGS), compiler, cpu))


def build_limit(source_dir: Path, cache: Path) -> Path:
    """Compile the limit program (cached by the hash of its source and the flags); returns the binary."""
    source = source_dir / LIMIT_SOURCE_FILE
    if not source.is_file():
        raise BenchError(f"{source}: limit source not found (give --limit-source DIR or a binary with --limit PATH)")
    digest = hashlib.sha256(source.read_bytes() + limit_build_context().encode()).hexdigest()[:16]
    binary = cache / digest / "lcsnn_limit"  # compiled once per source, flags, compiler and CPU
    if binary.is_file():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"lcsnn_limit.{os.getpid()}.tmp")
    proc = subprocess.run(["g++", *LIMIT_CXXFLAGS, "-o", str(partial), str(source)], capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"{source}: g++ failed ({proc.returncode}): {last}")
    partial.replace(binary)  # atomic: a concurrent benchmark sees the whole binary or none
    return binary


def limit_images(cache: Path) -> Path:
    """The limit's input: the MNIST training images' 20x20 centre crops, uint8, 400 bytes each (written once)."""
    path = cache / IMAGES_FILE
    if path.is_file():
        return path
    from brian_lcsnn.data import center_crop, load_dataset

    images, _ = load_dataset("mnist").split("train")
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{IMAGES_FILE}.{os.getpid()}.tmp")
    np.ascontiguousarray(center_crop(images, 20), dtype=np.uint8).tofile(partial)
    partial.replace(path)
    return path


def parse_limit_output(text: str, where: str = "limit output") -> dict[str, dict]:
    """The limit's ``bench`` JSON lines by mode (``"train"``, ``"infer"``); BenchError if one is missing."""
    records = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchError(f"{where}: not a JSON line ({err.msg}): {line[:80]}") from None
        if isinstance(record, dict) and "mode" in record:
            records[record["mode"]] = record
    missing = [mode for mode in ("train", "infer") if mode not in records]
    if missing:
        raise BenchError(f"{where}: no {' / '.join(missing)} line in {text.strip()[:120]!r}")
    for mode, record in records.items():
        if not isinstance(record.get("sps_median"), (int, float)):
            raise BenchError(f"{where}: {mode} line has no numeric sps_median")
    return records


def run_limit(binary: Path, images: Path, n_filters: int, float_dtype: str, n: int, warm: int, mean_weight: float,
              c_w: float, reps: int = 1) -> dict[str, dict]:  # fmt: skip
    """One ``bench`` run of the limit: ``warm`` training samples, then ``reps`` x ``n`` train and ``n`` inference."""
    cmd = [str(binary), "bench", "--images", str(images), "--F", str(n_filters),
           "--prec", LIMIT_PRECISION[float_dtype], "--warm", str(warm), "--n", str(n), "--reps", str(reps),
           "--mw", repr(mean_weight), "--cw", repr(c_w)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"{binary}: bench failed ({proc.returncode}): {last}")
    return parse_limit_output(proc.stdout, str(binary))


# -- the package -----------------------------------------------------------------------------------------------
class PackageBench:
    """The package's LC network of ``n_filters`` (the thesis's models) with chunks of ``n_samples``."""

    def __init__(self, n_filters: int, n_samples: int, warm: int, mean_weight: float, c_w: float, build_root: Path,
                 float_dtype: str, device: str = "cpp_standalone"):  # fmt: skip
        from brian_lcsnn.data import center_crop, load_dataset, pixel_rates
        from brian_lcsnn.models import load_model
        from brian_lcsnn.network import NetworkSpec
        from brian_lcsnn.simulation import NetworkState, Simulator
        from brian_lcsnn.topology import Geometry

        self.geometry = Geometry(20, 12, 4, n_filters)
        spec = NetworkSpec(self.geometry, load_model("input_thesis"), load_model("adaptive_lif"),
                           load_model("stdp_postpre"), load_model("normalise_incoming"),
                           load_model("competition_fixed"), samples_per_chunk=n_samples)  # fmt: skip
        self.n_samples = n_samples
        self.sim = Simulator(spec, device=device, build_root=build_root, float_dtype=float_dtype)
        self.prepare_s = self.sim.prepare()
        images, _ = load_dataset("mnist").split("train")
        # the limit's images in its order: warm-up, then the training samples, then the inference samples
        order = np.arange(warm + 2 * n_samples) % len(images)
        rates = pixel_rates(center_crop(images[order], 20), 127.5)
        self.train_rates, self.infer_rates = rates[warm : warm + n_samples], rates[warm + n_samples :]
        self.args = dict(seed=1, plastic={"XY": True}, norm_target=mean_weight * self.geometry.kernel_size**2)
        rng = np.random.default_rng(0)
        state = NetworkState(rng.random(self.geometry.n_xy), np.full(self.geometry.n_yy, c_w),
                             np.zeros(self.geometry.n_neurons))  # fmt: skip
        for start in range(0, warm, n_samples):  # warm-up in chunks of the build's size
            part = rates[start : min(start + n_samples, warm)]
            state = self.sim.run_chunk(part, np.ones(len(part)), state, **self.args).state
        self.state = state
        self.trained = None

    def train(self):
        """One training chunk, always from the warmed-up state; returns the result."""
        result = self.sim.run_chunk(self.train_rates, np.ones(self.n_samples), self.state, **self.args)
        if self.trained is None:
            self.trained = result.state
        return result

    def infer(self):
        """One inference chunk from the state after the first training chunk."""
        return self.sim.run_chunk(self.infer_rates, np.zeros(self.n_samples), self.trained, **self.args)


def median_rate(n: int, seconds: list[float]) -> float:
    return round(n / statistics.median(seconds), 1)


def bench(n_filters: int, n_samples: int, float_dtype: str, args, build_root: Path, limit) -> dict:
    """Package and limit side by side for one network and precision; the JSON record."""
    import brian2 as b2

    mean_weight, c_w = thesis_parameters(n_filters)
    mean_weight = mean_weight if args.mean_weight is None else args.mean_weight
    c_w = c_w if args.c_w is None else args.c_w
    start = time.perf_counter()
    package = PackageBench(n_filters, n_samples, args.warm, mean_weight, c_w, build_root, float_dtype, args.device)
    trains, infers, limit_train, limit_infer = [], [], [], []
    limit_record = {}
    for _ in range(args.repeat):  # interleaved: both see the same machine load
        trains.append(package.train())
        if limit is not None:
            limit_record = run_limit(*limit, n_filters, float_dtype, n_samples, args.warm, mean_weight, c_w)
            limit_train.append(limit_record["train"]["sps_median"])
            limit_infer.append(limit_record["infer"]["sps_median"])
        infers.append(package.infer())
    geometry = package.geometry
    result = {
        "device": args.device,
        "n_filters": n_filters,
        "y_neurons": geometry.n_neurons,
        "xy_synapses": geometry.n_xy,
        "samples": n_samples,
        "warm": args.warm,
        "float": float_dtype,
        "mean_weight": mean_weight,
        "c_w": c_w,
        "compiled": package.sim.compiled_now,
        "prepare_s": round(package.prepare_s, 2),
        "repeat": args.repeat,
        "train_samples_per_s": median_rate(n_samples, [r.seconds for r in trains]),
        "infer_samples_per_s": median_rate(n_samples, [r.seconds for r in infers]),
        "train_spikes_per_sample": round(float(trains[0].counts.sum(1).mean()), 1),
        "infer_spikes_per_sample": round(float(infers[0].counts.sum(1).mean()), 1),
    }
    if limit is not None:
        result.update({
            "limit_train_samples_per_s": round(statistics.median(limit_train), 1),
            "limit_infer_samples_per_s": round(statistics.median(limit_infer), 1),
            "limit_train_spikes_per_sample": limit_record["train"].get("y_spikes_per_sample"),
            "limit_infer_spikes_per_sample": limit_record["infer"].get("y_spikes_per_sample"),
        })  # fmt: skip
        result["ratio_train"] = round(result["train_samples_per_s"] / result["limit_train_samples_per_s"], 3)
        result["ratio_infer"] = round(result["infer_samples_per_s"] / result["limit_infer_samples_per_s"], 3)
    result.update({
        "peak_rss_children_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "brian2": b2.__version__,
        "total_s": round(time.perf_counter() - start, 1),
    })  # fmt: skip
    return result


# -- a whole thesis row ----------------------------------------------------------------------------------------
def load_row_protocol(protocol_ref: str):
    """The ``--thesis-row`` protocol, checked before anything runs; BenchError if it cannot be a row."""
    from brian_lcsnn.protocol import ProtocolError, load_protocol

    try:
        protocol = load_protocol(protocol_ref)
    except ProtocolError as err:
        raise BenchError(f"--thesis-row: {err}") from None
    if protocol["network"]["architecture"] != "LC":
        architecture = protocol["network"]["architecture"]
        raise BenchError(f"--thesis-row {protocol.path}: the limit models LC networks, got {architecture}")
    return protocol


def thesis_row(protocol, args, limit) -> dict:
    """Wall time of ``lcsnn run PROTOCOL`` with a warm build, next to the limit's training rate."""
    from brian_lcsnn.runner import make_simulator

    net = protocol["network"]
    float_dtype = protocol["simulation"]["float"]
    samples = sum(int(phase["n"]) for phase in protocol["phases"])
    env = dict(os.environ)
    if args.build_root:  # else the default build cache, the one `lcsnn run` uses
        env["BRIAN_LCSNN_BUILD"] = str(args.build_root)
    prepare_s = make_simulator(protocol, build_root=args.build_root).prepare()  # warm before the clock starts

    def limit_rate():
        if limit is None:
            return []
        record = run_limit(*limit, net["n_filters"], float_dtype, 1000, args.warm, net["mean_weight"], net["c_w"],
                           reps=args.repeat)  # fmt: skip
        return record["train"]["samples_per_s"][: args.repeat]

    before = limit_rate()
    with tempfile.TemporaryDirectory(prefix="lcsnn-bench-row-") as results:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "brian_lcsnn", "run", str(protocol.path), "--results", results,
                               "--quiet"], capture_output=True, text=True, env=env)  # fmt: skip
        wall = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"--thesis-row {protocol.path}: lcsnn run failed ({proc.returncode}): {last}")
    rates = before + limit_rate()  # the limit before and after the row, median of both
    result = {
        "thesis_row": str(protocol.path),
        "samples": samples,
        "float": float_dtype,
        "warm_prepare_s": round(prepare_s, 2),
        "wall_s": round(wall, 1),
        "samples_per_s": round(samples / wall, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if rates:
        result["limit_train_samples_per_s"] = round(statistics.median(rates), 1)
        result["ratio_train"] = round(result["samples_per_s"] / result["limit_train_samples_per_s"], 3)
    return result


def table(rows: list[dict], row: dict | None) -> str:
    """The human-readable summary."""
    lines = [
        f"{'network':<14}{'float':<9}{'package train/infer':>22}{'limit train/infer':>20}{'ratio train/infer':>20}"
    ][: len(rows)]
    for r in rows:
        limit = (
            f"{r['limit_train_samples_per_s']:.1f} / {r['limit_infer_samples_per_s']:.1f}"
            if "ratio_train" in r
            else "-"
        )
        ratio = f"{r['ratio_train']:.3f} / {r['ratio_infer']:.3f}" if "ratio_train" in r else "-"
        lines.append(
            f"{'LC ' + str(r['n_filters']) + '/12':<14}{r['float']:<9}"
            f"{r['train_samples_per_s']:>11.1f} / {r['infer_samples_per_s']:<8.1f}{limit:>20}{ratio:>20}"
        )
    if row:
        limit = (
            f"limit train {row['limit_train_samples_per_s']:.1f}, ratio {row['ratio_train']:.3f}"
            if "ratio_train" in row
            else "no limit"
        )
        lines.append(f"thesis row {Path(row['thesis_row']).name}: {row['samples']} samples in {row['wall_s']:.1f} s = "
                     f"{row['samples_per_s']:.1f} samples/s ({limit})")  # fmt: skip
    repeat = f"medians of {rows[0]['repeat']} side by side; " if rows else ""
    lines.append(f"samples/s, {repeat}load {os.getloadavg()[0]:.2f}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def main(argv=None) -> int:
    parser = _Parser(prog="bench_lc.py", description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs="+",
                        help="networks LC F/12 (default: 25 100 1000; none with --thesis-row alone)")  # fmt: skip
    parser.add_argument("--samples", type=int, nargs="+",
                        help="samples per timed chunk, one per --filters value or one for all (default: "
                        "500, LC 1000: 60)")  # fmt: skip
    parser.add_argument("--warm", type=int, default=200, help="training samples before the timed chunks")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each measurement; the medians are printed")
    parser.add_argument("--float", nargs="+", default=["float64", "float32"], choices=tuple(LIMIT_PRECISION))
    parser.add_argument("--mean-weight", type=float, help="override the thesis's mean_weight (LC 25: 0.46, else 0.32)")
    parser.add_argument("--c-w", type=float, help="override the thesis's c_w (LC 25: -100, else -50)")
    parser.add_argument("--device", default="cpp_standalone", choices=("cpp_standalone", "cuda_standalone"))
    parser.add_argument("--build-root", type=Path, default=None, help="build cache (default: a fresh temporary folder)")
    parser.add_argument(
        "--limit-source",
        type=Path,
        default=DEFAULT_LIMIT_SOURCE,
        help=f"folder of {LIMIT_SOURCE_FILE} (default: ../shared/bench/limit/ next to the repository)",
    )
    parser.add_argument("--limit", type=Path, help="a prebuilt limit binary (instead of compiling --limit-source)")
    parser.add_argument("--no-limit", action="store_true", help="measure the package only")
    parser.add_argument(
        "--thesis-row",
        metavar="PROTOCOL",
        help="also time `lcsnn run PROTOCOL` with a warm build (e.g. protocols/thesis/lc100_k12.yaml)",
    )
    args = parser.parse_args(argv)
    if args.filters is None:
        args.filters = [] if args.thesis_row else list(DEFAULT_SAMPLES)
    if args.samples is None:
        samples = [DEFAULT_SAMPLES.get(n_filters, 500) for n_filters in args.filters]
    else:
        samples = args.samples * len(args.filters) if len(args.samples) == 1 else args.samples
    if len(samples) != len(args.filters):
        parser.error(f"--samples: give one value or one per --filters value ({len(args.filters)}), got {len(samples)}")
    for name, values, minimum in (("--filters", args.filters, 1), ("--samples", samples, 1),
                                  ("--repeat", [args.repeat], 1), ("--warm", [args.warm], 0)):  # fmt: skip
        if values and min(values) < minimum:
            parser.error(f"{name}: must be >= {minimum}, got {min(values)}")
    if args.limit is not None and not (args.limit.is_file() and os.access(args.limit, os.X_OK)):
        parser.error(f"--limit {args.limit}: not an executable file")
    try:
        protocol = load_row_protocol(args.thesis_row) if args.thesis_row else None
        limit = None
        if not args.no_limit:
            cache = limit_cache_dir()
            binary = args.limit or build_limit(args.limit_source, cache)
            limit = (binary, limit_images(cache))
        root = args.build_root or Path(tempfile.mkdtemp(prefix="lcsnn-bench-"))
        rows = []
        for n_filters, n_samples in zip(args.filters, samples, strict=True):
            for float_dtype in args.float:
                rows.append(bench(n_filters, n_samples, float_dtype, args, root, limit))
                print(json.dumps(rows[-1]), flush=True)
        row = None
        if protocol is not None:
            row = thesis_row(protocol, args, limit)
            print(json.dumps(row), flush=True)
    except BenchError as err:
        print(f"bench_lc.py: error: {err}", file=sys.stderr)
        return err.code
    print(table(rows, row), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
