"""Training and inference speed (samples/s) and peak memory of LC networks, C++ standalone, one thread.

    python benchmarks/bench_lc.py --filters 25 100 1000 --samples 500 500 60 --repeat 3

Prints one JSON line per network. Compare with the BindsNET peer (../shared/bench/) measured in the same go:
these machines are shared and noisy, so only ratios taken side by side mean anything.
"""

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import brian2 as b2
import numpy as np

from brian_lcsnn.data import center_crop, load_dataset, pixel_rates
from brian_lcsnn.models import load_model
from brian_lcsnn.network import NetworkSpec
from brian_lcsnn.simulation import NetworkState, Simulator
from brian_lcsnn.topology import Geometry


def bench(n_filters: int, n_samples: int, build_root: Path, float_dtype: str, repeat: int,
          device: str = "cpp_standalone") -> dict:  # fmt: skip
    geometry = Geometry(20, 12, 4, n_filters)
    spec = NetworkSpec(geometry, load_model("input_thesis"), load_model("adaptive_lif"), load_model("stdp_postpre"),
                       load_model("normalise_incoming"), load_model("competition_fixed"),
                       samples_per_chunk=n_samples)  # fmt: skip
    sim = Simulator(spec, device=device, build_root=build_root, float_dtype=float_dtype)
    prepare = sim.prepare()
    images, _ = load_dataset("mnist").split("train")
    rates = pixel_rates(center_crop(images[:n_samples], 20), 127.5)
    rng = np.random.default_rng(0)
    state = NetworkState(rng.random(geometry.n_xy), np.full(geometry.n_yy, -100.0), np.zeros(geometry.n_neurons))
    mean_weight = 0.32 if n_filters >= 100 else 0.46
    args = dict(seed=1, plastic={"XY": True}, norm_target=mean_weight * 144)
    # the same chunk `repeat` times from the same state: the median is robust to a noisy machine
    trains = [sim.run_chunk(rates, np.ones(n_samples), state, **args) for _ in range(repeat)]
    train = trains[0]
    infers = [sim.run_chunk(rates, np.zeros(n_samples), train.state, **args) for _ in range(repeat)]
    infer = infers[0]
    return {
        "device": device,
        "n_filters": n_filters,
        "y_neurons": geometry.n_neurons,
        "xy_synapses": geometry.n_xy,
        "samples": n_samples,
        "float": float_dtype,
        "compiled": sim.compiled_now,
        "prepare_s": round(prepare, 2),
        "repeat": repeat,
        "train_samples_per_s": round(n_samples / float(np.median([r.seconds for r in trains])), 1),
        "infer_samples_per_s": round(n_samples / float(np.median([r.seconds for r in infers])), 1),
        "train_spikes_per_sample": round(float(train.counts.sum(1).mean()), 1),
        "infer_spikes_per_sample": round(float(infer.counts.sum(1).mean()), 1),
        "peak_rss_children_mb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1
        ),  # compiler included
        "brian2": b2.__version__,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", type=int, nargs="+", default=[25, 100, 1000])
    parser.add_argument("--samples", type=int, nargs="+", default=[500, 500, 60])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each chunk; the median is printed")
    parser.add_argument("--device", default="cpp_standalone", choices=("cpp_standalone", "cuda_standalone"))
    parser.add_argument("--float", default="float64", choices=("float64", "float32"))
    parser.add_argument("--build-root", type=Path, default=None, help="build cache (default: a fresh temporary folder)")
    args = parser.parse_args()
    root = args.build_root or Path(tempfile.mkdtemp(prefix="lcsnn-bench-"))
    for n_filters, n_samples in zip(args.filters, args.samples, strict=True):
        start = time.perf_counter()
        result = bench(n_filters, n_samples, root, args.float, args.repeat, args.device)
        result["total_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
