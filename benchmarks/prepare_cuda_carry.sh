#!/usr/bin/env bash
# Run here (with the registries) before the GPU check: the wheels and data the GPU machine cannot fetch.
#   bash benchmarks/prepare_cuda_carry.sh   ->  .cuda_wheels/ (brian2 2.10.1, brian2cuda 1.0b1), .cuda_data/mnist.npz
# Then, with the device tool: run(command="bash benchmarks/cuda_device_check.sh", carry=[".cuda_wheels", ".cuda_data"])
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cuda_wheels .cuda_data
pip download -q --no-deps --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .cuda_wheels brian2==2.10.1 brian2cuda==1.0b1
python3 -c "from brian_lcsnn.data import load_dataset, default_cache_dir; load_dataset('mnist'); print(default_cache_dir())" \
    | tail -1 | xargs -I{} cp {}/mnist.npz .cuda_data/
ls -la .cuda_wheels .cuda_data
