#!/usr/bin/env bash
# The CUDA check, as one call on the GPU machine (Python 3.12, CUDA 13, no registries; about 8 minutes):
# install the carried wheels (benchmarks/prepare_cuda_carry.sh), then
#   1. lcsnn doctor
#   2. the C++/CUDA consistency test (tests/test_cuda.py, LC)
#   3. the quickstart protocol on cpp_standalone and on cuda_standalone (accuracy side by side)
#   4. samples/s of LC 100 training and inference, C++ vs CUDA, in the same go
# Everything lands in $OUT (doctor.txt, consistency.txt, quickstart_*.txt, bench.jsonl, summary.json).
# Each CUDA structure compiles once (1-2 minutes with 16 cores): four structures in all.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lcsnn_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 BRIAN_LCSNN_DATA="$PWD/.cuda_data" BRIAN_LCSNN_BUILD=/tmp/lcsnn_builds
python3 -m venv --system-site-packages /tmp/lcsnn_venv && . /tmp/lcsnn_venv/bin/activate
pip install -q --no-index --no-deps .cuda_wheels/*.whl && pip install -q --no-deps --no-build-isolation -e . \
    || { echo "install failed" | tee "$OUT/summary.json"; exit 1; }
lcsnn doctor > "$OUT/doctor.txt" 2>&1
timeout 240 python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py -k LC > "$OUT/consistency.txt" 2>&1
for device in cpp_standalone cuda_standalone; do
    timeout 200 lcsnn run protocols/quickstart.yaml --device "$device" --results /tmp/lcsnn_results --quiet \
        > "$OUT/quickstart_$device.txt" 2>&1
done
for device in cpp_standalone cuda_standalone; do
    timeout 150 python benchmarks/bench_lc.py --device "$device" --filters 100 --samples 500 --repeat 2 \
        --build-root /tmp/lcsnn_builds >> "$OUT/bench.jsonl" 2>> "$OUT/bench.err"
done
python - "$OUT" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
summary = {"consistency": (out / "consistency.txt").read_text().strip().splitlines()[-1:]}
for f in sorted(out.glob("quickstart_*.txt")):
    summary[f.stem] = [line.strip() for line in f.read_text().splitlines() if "voting" in line or "linear" in line]
summary["bench"] = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines() if line.startswith("{")] \
    if (out / "bench.jsonl").exists() else []
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
