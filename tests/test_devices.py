"""One small learning LC network, written once and run per device, chunk size, float type and thread count.

The devices draw their random numbers from different generators (numpy on the runtime device, Brian2's C++
generator in a standalone build), so the input is the deterministic ``input_regular`` (a pixel of rate r fires
every round(1 / (r dt)) steps): every device must then give the same spike counts, weights and thresholds.
"""

import brian2 as b2
import numpy as np
import pytest

from brian_lcsnn.models import load_model
from brian_lcsnn.network import NetworkSpec
from brian_lcsnn.simulation import NetworkState, Simulator, spike_counts
from brian_lcsnn.topology import Geometry

from .conftest import FIXTURES

GEOMETRY = Geometry(crop=8, kernel_size=4, stride=2, n_filters=3)  # 9 locations, 27 Y neurons, 432 XY synapses
STEPS, N_SAMPLES = 60, 6
LEARNING = np.array([1, 1, 1, 1, 0, 0], dtype=float)  # four training samples, then two evaluated
PLASTIC = {"XY": True, "YY": True}
NO_NORMALISATION = str(FIXTURES / "models" / "no_normalisation.yaml")


def _spec(samples_per_chunk):
    return NetworkSpec(geometry=GEOMETRY, input=load_model("input_regular"), neuron=load_model("adaptive_lif"),
                       xy=load_model("stdp_postpre"), normalisation=load_model("normalise_incoming"),
                       yy=load_model("competition_stdp"), samples_per_chunk=samples_per_chunk,
                       time_per_sample=STEPS * b2.ms)  # fmt: skip


def _inputs():
    rng = np.random.default_rng(7)
    rates = rng.integers(0, 256, size=(N_SAMPLES, GEOMETRY.n_inputs)) / 255 * 127.5
    state = NetworkState(rng.random(GEOMETRY.n_xy), np.full(GEOMETRY.n_yy, -5.0), np.zeros(GEOMETRY.n_neurons))
    return rates, state


def _run(device, build_root, samples_per_chunk=N_SAMPLES, **options):
    """Counts (N_SAMPLES, n_neurons) and the final state, in chunks of ``samples_per_chunk``."""
    sim = Simulator(_spec(samples_per_chunk), device=device, build_root=build_root, **options)
    sim.prepare()
    rates, state = _inputs()
    counts = []
    for lo in range(0, N_SAMPLES, samples_per_chunk):
        part = slice(lo, lo + samples_per_chunk)
        out = sim.run_chunk(rates[part], LEARNING[part], state, seed=1, plastic=PLASTIC,
                            norm_target=1.6 * GEOMETRY.kernel_size**2)  # fmt: skip
        counts.append(out.counts)
        state = out.state
    return np.concatenate(counts), state


@pytest.fixture(scope="module")
def runtime_result(build_root):
    return _run("runtime", build_root)


def _assert_same(result, reference, rtol=1e-12):
    (counts, state), (ref_counts, ref_state) = result, reference
    np.testing.assert_array_equal(counts, ref_counts)
    for name in ("xy_w", "yy_w", "theta"):
        np.testing.assert_allclose(getattr(state, name), getattr(ref_state, name), rtol=rtol, atol=0, err_msg=name)


@pytest.mark.runtime
def test_the_reference_learns_and_competes(runtime_result):
    counts, state = runtime_result
    _, start = _inputs()
    assert counts[:4].sum() > 50 and counts[4:].sum() > 0  # spikes in training and evaluation
    assert not np.array_equal(state.xy_w, start.xy_w) and not np.array_equal(state.yy_w, start.yy_w)
    assert state.theta.max() > 0


@pytest.mark.parametrize(
    "device",
    [pytest.param("runtime", marks=pytest.mark.runtime), pytest.param("cpp_standalone", marks=pytest.mark.standalone)],
)
def test_every_device_gives_the_runtime_result(device, build_root, runtime_result):
    """Runtime twice (reproducible) and the C++ build: identical counts, weights and thresholds."""
    _assert_same(_run(device, build_root), runtime_result, rtol=1e-9)


@pytest.mark.runtime
@pytest.mark.parametrize("samples_per_chunk", [3, 2, 1])
def test_chunk_size_does_not_change_the_result(samples_per_chunk, build_root, runtime_result):
    """Chunks of K/2 (and smaller) on deterministic input: the state carried between chunks is all there is."""
    _assert_same(_run("runtime", build_root, samples_per_chunk), runtime_result)


@pytest.mark.runtime
def test_float32_is_float32_close_to_float64(build_root, runtime_result):
    counts, state = _run("runtime", build_root, float_dtype="float32")
    ref_counts, ref_state = runtime_result
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(state.xy_w, ref_state.xy_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.yy_w, ref_state.yy_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.theta, ref_state.theta, rtol=1e-4, atol=1e-9)


@pytest.mark.standalone
@pytest.mark.slow
def test_float32_cpp_build_is_float32_close_to_float64(build_root, runtime_result):
    counts, state = _run("cpp_standalone", build_root, float_dtype="float32")
    np.testing.assert_array_equal(counts, runtime_result[0])
    np.testing.assert_allclose(state.xy_w, runtime_result[1].xy_w, rtol=1e-4, atol=1e-6)


@pytest.mark.standalone
@pytest.mark.slow
def test_openmp_build_with_two_threads_gives_the_one_thread_result(build_root, runtime_result):
    _assert_same(_run("cpp_standalone", build_root, threads=2), runtime_result, rtol=1e-9)


@pytest.mark.codegen_independent
def test_a_spike_at_a_samples_last_step_counts_for_that_sample():
    dt, steps = 1e-3, 60
    # neuron 1: the last step of sample 0 (59), the first of sample 1 (60), the last of sample 1 (119);
    # t / dt a hair below or above the step (float times from a device), and a spike in the silent extra step
    times = np.array([59, 60, 119, 59 * (1 - 1e-12), 60 * (1 + 1e-12), 120]) * dt
    counts = spike_counts(np.array([1, 1, 1, 2, 2, 0]), times, 2, 3, steps, dt)
    assert counts.tolist() == [[0, 1, 1], [0, 2, 1]]
    assert counts.dtype == np.uint16


@pytest.mark.runtime
@pytest.mark.parametrize("samples_per_chunk", [2, 1])
def test_a_spike_at_the_last_step_of_a_sample_is_that_samples(samples_per_chunk, build_root):
    """Pixel 0 fires every 19 steps from step 18 of each sample (input_regular: first spike at interval - 1);
    Y0 (XY weight 20 mV from it) fires one step later, at the last step (19) of a 20-step sample: one spike
    per sample, in a chunk of two samples and in chunks of one."""
    spec = NetworkSpec(geometry=Geometry(crop=2, kernel_size=2, stride=1, n_filters=2),
                       input=load_model("input_regular"), neuron=load_model("adaptive_lif"),
                       xy=load_model("stdp_postpre"), normalisation=load_model(NO_NORMALISATION),
                       yy=load_model("competition_fixed"), samples_per_chunk=samples_per_chunk,
                       time_per_sample=20 * b2.ms)  # fmt: skip
    sim = Simulator(spec, device="runtime", build_root=build_root)
    sim.prepare()
    state = NetworkState(np.array([20.0, 0, 0, 0, 0, 0, 0, 0]), np.zeros(2), np.zeros(2))
    rates = np.array([[1000 / 19, 0, 0, 0]] * 2)
    counts = [sim.run_chunk(rates[lo : lo + samples_per_chunk], np.zeros(samples_per_chunk), state, seed=1,
                            plastic={}, norm_target=1.0).counts for lo in range(0, 2, samples_per_chunk)]  # fmt: skip
    assert np.concatenate(counts).tolist() == [[1, 0], [1, 0]]
