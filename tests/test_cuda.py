"""C++ and CUDA builds agree: the same network and input give the same spikes and weights.

As brian2cuda's own test_cpp_cuda_consistency, with deterministic input (models/input_regular.yaml) so that
the two devices' different random generators play no part. Needs brian2cuda and an NVIDIA GPU.
"""

import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.cuda

brian2cuda = pytest.importorskip("brian2cuda", reason="needs brian2cuda (Python >= 3.12)")
if shutil.which("nvidia-smi") is None:
    pytest.skip("needs an NVIDIA GPU", allow_module_level=True)

import brian2 as b2  # noqa: E402 -- after the skips above: no GPU, no import

from brian_lcsnn.models import load_model  # noqa: E402 -- after the skips above
from brian_lcsnn.network import NetworkSpec  # noqa: E402 -- after the skips above
from brian_lcsnn.simulation import NetworkState, Simulator  # noqa: E402 -- after the skips above
from brian_lcsnn.topology import Geometry  # noqa: E402 -- after the skips above


@pytest.mark.parametrize("architecture", ["LC", "C"])
def test_cpp_and_cuda_builds_agree(build_root, architecture):
    geometry = Geometry(crop=20, kernel_size=12, stride=4, n_filters=10, architecture=architecture)
    conv = architecture == "C"
    spec = NetworkSpec(
        geometry=geometry,
        input=load_model("input_regular"),
        neuron=load_model("adaptive_lif"),
        xy=load_model("stdp_postpre_shared" if conv else "stdp_postpre"),
        normalisation=load_model("normalise_kernel" if conv else "normalise_incoming"),
        yy=load_model("competition_fixed"),
        samples_per_chunk=5,
        time_per_sample=100 * b2.ms,
    )
    rng = np.random.default_rng(3)
    rates = (rng.random((5, 400)) < 0.3) * rng.uniform(20, 127.5, size=(5, 400))
    state = NetworkState(rng.random(geometry.n_xy_parameters), np.full(geometry.n_yy, -20.0),
                         np.zeros(geometry.n_neurons))  # fmt: skip
    results = {}
    for device in ("cpp_standalone", "cuda_standalone"):
        sim = Simulator(spec, device=device, build_root=build_root)
        sim.prepare()
        results[device] = sim.run_chunk(rates, np.ones(5), state, seed=1, plastic={"XY": True},
                                        norm_target=0.4 * 144)  # fmt: skip
    cpp, cuda = results["cpp_standalone"], results["cuda_standalone"]
    assert cpp.counts.sum() > 0
    np.testing.assert_array_equal(cpp.counts, cuda.counts)
    # float tolerance: atomic adds (C) and reductions sum in another order on the GPU
    np.testing.assert_allclose(cpp.state.xy_w, cuda.state.xy_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cpp.state.theta, cuda.state.theta, rtol=1e-12)
