"""The neuron and plasticity equations against hand-computed values and against a numpy statement of the thesis."""

from dataclasses import replace

import brian2 as b2
import numpy as np
import pytest

from brian_lcsnn.models import load_model
from brian_lcsnn.network import NetworkSpec, build_network
from brian_lcsnn.simulation import NetworkState, Simulator
from brian_lcsnn.topology import Geometry, competition_pairs, kernel_index, local_pairs

from .conftest import FIXTURES
from .thesis_reference import simulate

E = np.exp


def _spec(geometry, *, samples_per_chunk, steps, neuron=None, xy=None, normalisation="normalise_incoming"):
    conv = geometry.architecture == "C"
    if conv and normalisation == "normalise_incoming":
        normalisation = "normalise_kernel"
    return NetworkSpec(
        geometry=geometry,
        input=load_model("input_regular"),
        neuron=load_model("adaptive_lif").with_parameters(neuron or {}, "test"),
        xy=load_model("stdp_postpre_shared" if conv else "stdp_postpre").with_parameters(xy or {}, "test"),
        normalisation=load_model(normalisation),
        yy=load_model("competition_fixed"),
        samples_per_chunk=samples_per_chunk,
        time_per_sample=steps * b2.ms,
    )


@pytest.fixture(params=[pytest.param("cpp_standalone", marks=pytest.mark.standalone),
                        pytest.param("runtime", marks=pytest.mark.runtime)])  # fmt: skip
def device(request):
    return request.param


def test_hand_computed_neuron_and_stdp(device, build_root):
    """One Y neuron, two active inputs, 20 steps; every number below is worked out by hand.

    Pixel 0 fires every 4 steps (250 Hz: steps 3, 7, 11, 15, 19), weight 7; pixel 1 fires at step 12
    (1000/13 Hz), weight 14. Input arrives one step later, after the leak (decay d = e^(-1/20) per step):
      step 4: v = -58; step 8: v = -65 + 7 d^4 + 7 = -52.27 (below -52); step 12: v = -65 + 7 d^8 + 7 d^4 + 7
      = -47.58 -> spike at step 12, reset to -65, theta = 0.05 mV.
      Pixel 1's 14 mV arrive at step 13, during refractoriness (2 steps): dropped (else v = -51: a spike).
      Step 16: v = -58. One spike in all.
    STDP (nu_pot 1e-2 on Y spikes with X's trace, nu_dep 1e-4 on X spikes with Y's trace, tau 20 ms):
      w0 = 7 + 1e-2 e^(-1/20) - 1e-4 (e^(-3/20) + e^(-7/20))   (Y spike 1 step after pixel 0's; pixel 0 at 15, 19)
      w1 = 14 + 1e-2 - 1e-4                                     (same-step pre and post: both terms, one clamp)
    """
    geometry = Geometry(crop=2, kernel_size=2, stride=1, n_filters=1)
    spec = _spec(geometry, samples_per_chunk=2, steps=20, xy={"wmax": 100},
                 normalisation=str(FIXTURES / "models" / "no_normalisation.yaml"))  # fmt: skip
    sim = Simulator(spec, device=device, build_root=build_root)
    sim.prepare()
    rates = np.array([[250.0, 1000 / 13, 0, 0]] * 2)
    state = NetworkState(np.array([7.0, 14.0, 0.0, 0.0]), np.zeros(0), np.zeros(1))
    learned = sim.run_chunk(rates[:1], np.ones(1), state, seed=1, plastic={"XY": True}, norm_target=1.0)

    assert learned.counts.tolist() == [[1]]
    w0 = 7 + 1e-2 * E(-1 / 20) - 1e-4 * (E(-3 / 20) + E(-7 / 20))
    np.testing.assert_allclose(learned.state.xy_w, [w0, 14 + 1e-2 - 1e-4, 0, 0], rtol=0, atol=1e-12)
    # theta: +0.05 mV at step 12, then decays with tau 1e6 ms for the 7 remaining steps of the sample
    np.testing.assert_allclose(learned.state.theta, [0.05e-3 * E(-7 / 1e6)], rtol=1e-12)

    # the same two samples with learning off: same spike, nothing changes, theta frozen
    frozen = sim.run_chunk(rates, np.zeros(2), learned.state, seed=1, plastic={"XY": True}, norm_target=1.0)
    assert frozen.counts.tolist() == [[1], [1]]
    np.testing.assert_array_equal(frozen.state.xy_w, learned.state.xy_w)
    np.testing.assert_array_equal(frozen.state.theta, learned.state.theta)


@pytest.mark.standalone
@pytest.mark.parametrize("architecture", ["LC", "C"])
def test_matches_numpy_statement_of_the_thesis(build_root, architecture):
    """A small network with competition, normalisation and learning across two chunks, then evaluation.

    For C, the numpy statement sums every location's PostPre update into the shared kernel entry, then
    clamps once (the thesis's conv rule): matching it shows the kernel update is the sum over locations."""
    geometry = Geometry(crop=8, kernel_size=4, stride=2, n_filters=3, architecture=architecture)
    steps = 60
    spec = _spec(geometry, samples_per_chunk=3, steps=steps)
    sim = Simulator(spec, build_root=build_root)
    sim.prepare()
    rng = np.random.default_rng(7)
    rates = rng.integers(0, 256, size=(9, geometry.n_inputs)) / 255 * 127.5
    learning = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=float)
    norm_target = 1.6 * geometry.kernel_size**2
    state = NetworkState(rng.random(geometry.n_xy_parameters), np.full(geometry.n_yy, -5.0),
                         np.zeros(geometry.n_neurons))  # fmt: skip

    counts = []
    for lo in range(0, 9, 3):
        out = sim.run_chunk(rates[lo : lo + 3], learning[lo : lo + 3], state, seed=1, plastic={"XY": True},
                            norm_target=norm_target, read_synapses=True)  # fmt: skip
        counts.append(out.counts)
        state = out.state
    counts = np.concatenate(counts)
    if architecture == "C":
        # every synapse reads its kernel entry: all locations of a channel hold the same k x k array
        per_location = np.zeros((geometry.n_filters, geometry.n_locations, geometry.kernel_size**2))
        i, j = local_pairs(geometry)
        kidx = kernel_index(geometry)
        per_location[j // geometry.n_locations, j % geometry.n_locations, kidx % geometry.kernel_size**2] = (
            out.synapse_w
        )
        assert np.all(per_location == per_location[:, :1, :])
        np.testing.assert_array_equal(per_location[:, 0, :].ravel(), state.xy_w)

    ref_counts, ref_w, ref_theta = simulate(geometry, rates, learning, *_initial(geometry, rng_seed=7),
                                            norm_target=norm_target, steps=steps)  # fmt: skip
    assert counts.sum() > 50, "the test network must spike"
    # the build's synapse order is the topology's (stored states and the reference rely on it): both
    # projections' (i, j) as the network builds them (explicit arrays: the same order on every device)
    b2.device.reinit()
    b2.set_device("runtime")
    b2.start_scope()
    built = build_network(spec)
    for syn, pairs in ((built.XY, local_pairs(geometry)), (built.YY, competition_pairs(geometry))):
        np.testing.assert_array_equal(np.stack([syn.i[:], syn.j[:]]), np.stack(pairs))
    np.testing.assert_array_equal(counts, ref_counts)
    np.testing.assert_allclose(state.xy_w, ref_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.theta * 1e3, ref_theta, rtol=1e-9, atol=1e-12)


def _initial(geometry, rng_seed):
    rng = np.random.default_rng(rng_seed)
    rng.integers(0, 256, size=(9, geometry.n_inputs))
    return rng.random(geometry.n_xy_parameters), np.full(geometry.n_yy, -5.0), np.zeros(geometry.n_neurons)


def _yy_spec(yy_params, steps=20, yy_model="competition_stdp", yy_pairs="competition"):
    return NetworkSpec(
        geometry=Geometry(crop=2, kernel_size=2, stride=1, n_filters=2, yy_pairs=yy_pairs),
        input=load_model("input_regular"),
        neuron=load_model("adaptive_lif"),
        xy=load_model("stdp_postpre"),
        normalisation=load_model(str(FIXTURES / "models" / "no_normalisation.yaml")),
        yy=load_model(yy_model).with_parameters(yy_params, "test"),
        samples_per_chunk=1,
        time_per_sample=steps * b2.ms,
    )


# Two Y neurons at one location, driven by their own pixel (XY weight 20 mV: a spike one step after each
# input spike). Pixel 0 fires at steps 3, 7, 11, 15, 19 -> Y0 fires at 4, 8, 12, 16; pixel 1 at 5, 11, 17 ->
# Y1 fires at 6, 12, 18. XY pre-major order: (pixel, neuron) = (0,0), (0,1), (1,0), (1,1), ...
YY_RATES = np.array([[250.0, 1000 / 6, 0, 0]])
YY_XY = np.array([20.0, 0, 0, 20.0, 0, 0, 0, 0])


@pytest.mark.parametrize("yy_model", ["competition_stdp", "competition_stdp_decay"])
def test_hand_computed_competition_learning(device, build_root, yy_model):
    """YY anti-STDP over one sample, every term worked out by hand (traces: tau 20 ms, d = e^(-1/20)).

    Synapse 0->1 (pre Y0, post Y1): Y1@6 +A_neg x_src(Y0) = e^-0.1; Y0@8 -A_pos x_tgt(Y1) = e^-0.1;
      @12 both (on_post first): +A_neg, -A_pos; Y0@16 -A_pos e^-0.2; Y1@18 +A_neg e^-0.1.
    Synapse 1->0: Y1@6 -A_pos e^-0.1; Y0@8 +A_neg e^-0.1; @12 +A_neg -A_pos; Y0@16 +A_neg e^-0.2;
      Y1@18 -A_pos e^-0.1.
    Plus (competition_stdp_decay) weight_decay subtracted in each of the 20 learning steps; the clamp at 0
    never binds here.
    """
    A_pos, A_neg = -0.5, -1.0
    decay = 0.001 if yy_model.endswith("decay") else 0.0
    params = {"A_pos": A_pos, "A_neg": A_neg} | ({"weight_decay": decay} if decay else {})
    sim = Simulator(_yy_spec(params, yy_model=yy_model), device=device, build_root=build_root)
    sim.prepare()
    state = NetworkState(YY_XY.copy(), np.array([-1.0, -1.0]), np.zeros(2))
    out = sim.run_chunk(YY_RATES, np.ones(1), state, seed=1, plastic={"YY": True}, norm_target=1.0)

    assert out.counts.tolist() == [[4, 3]]
    e1, e2 = E(-0.1), E(-0.2)
    w01 = -1 - 20 * decay + A_neg * (e1 + 1 + e1) - A_pos * (e1 + 1 + e2)
    w10 = -1 - 20 * decay + A_neg * (e1 + 1 + e2) - A_pos * (e1 + 1 + e1)
    np.testing.assert_allclose(out.state.yy_w, [w01, w10], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out.state.xy_w, YY_XY)  # XY is not plastic here


@pytest.mark.standalone
def test_runtime_parameters_take_new_values_without_a_compile(build_root):
    """A_pos, A_neg (competition_stdp.yaml), tau_src and tau_tgt (adaptive_lif.yaml) are declared in their
    models' equations: each run sets them, so new values reuse the compiled network and still act exactly.
    By hand as above, with x_src decaying by s = e^(-1/10) and x_tgt by t = e^(-1/40) per step."""
    Simulator(_yy_spec({"A_pos": -0.5, "A_neg": -1.0}), build_root=build_root).prepare()
    A_pos, A_neg = -0.25, -2.0
    spec = _yy_spec({"A_pos": A_pos, "A_neg": A_neg})
    spec = replace(spec, neuron=spec.neuron.with_parameters({"tau_src": "10 ms", "tau_tgt": "40 ms"}, "test"))
    sim = Simulator(spec, build_root=build_root)
    sim.prepare()
    assert not sim.compiled_now
    state = NetworkState(YY_XY.copy(), np.array([-1.0, -1.0]), np.zeros(2))
    out = sim.run_chunk(YY_RATES, np.ones(1), state, seed=1, plastic={"YY": True}, norm_target=1.0)
    assert out.counts.tolist() == [[4, 3]]
    s2, s4, t2, t4 = E(-2 / 10), E(-4 / 10), E(-2 / 40), E(-4 / 40)
    w01 = -1 + A_neg * (s2 + 1 + s2) - A_pos * (t2 + 1 + t4)
    w10 = -1 + A_neg * (s2 + 1 + s4) - A_pos * (t2 + 1 + t2)
    np.testing.assert_allclose(out.state.yy_w, [w01, w10], rtol=0, atol=1e-12)
    # a compiled parameter (the clamp) is part of the code: a new value is a new build
    assert Simulator(_yy_spec({"c_w_max": -0.1}), build_root=build_root).key != sim.key


@pytest.mark.standalone
@pytest.mark.parametrize("yy_model", ["competition_stdp", "competition_stdp_decay"])
def test_competition_clamps_hold_and_locked_projections_do_not_move(build_root, yy_model):
    # positive A's drive the weights up: they must stop at c_w_max
    params = {"A_pos": 2.0, "A_neg": 3.0, "c_w_min": -1.5, "c_w_max": -0.5}
    sim = Simulator(_yy_spec(params, yy_model=yy_model), build_root=build_root)
    sim.prepare()
    state = NetworkState(YY_XY.copy(), np.array([-1.0, -1.2]), np.zeros(2))
    learned = sim.run_chunk(YY_RATES, np.ones(1), state, seed=1, plastic={"YY": True}, norm_target=1.0)
    assert np.all(learned.state.yy_w >= -1.5) and np.all(learned.state.yy_w <= -0.5)
    assert np.isclose(learned.state.yy_w, -0.5).any()

    # a training sample with YY and XY locked: neither moves, only theta adapts
    locked = sim.run_chunk(YY_RATES, np.ones(1), state, seed=1, plastic={"XY": False, "YY": False}, norm_target=1.0)
    np.testing.assert_array_equal(locked.state.yy_w, state.yy_w)
    np.testing.assert_array_equal(locked.state.xy_w, state.xy_w)
    assert locked.state.theta.min() > 0


@pytest.mark.standalone
def test_all_pairs_learn_within_the_sample_and_are_masked_after_it(build_root):
    """yy_pairs "all" (the thesis's dense matrix): pairs 0->0, 0->1, 1->0, 1->1. The competing pairs learn
    as above; the self pairs learn too (their input falls in the refractory period) and are zeroed after
    the sample."""
    A_pos, A_neg = -0.5, -1.0
    sim = Simulator(_yy_spec({"A_pos": A_pos, "A_neg": A_neg}, yy_pairs="all"), build_root=build_root)
    sim.prepare()
    state = NetworkState(YY_XY.copy(), np.array([0.0, -1.0, -1.0, 0.0]), np.zeros(2))
    out = sim.run_chunk(YY_RATES, np.ones(1), state, seed=1, plastic={"YY": True}, norm_target=1.0)
    assert out.counts.tolist() == [[4, 3]]
    e1, e2 = E(-0.1), E(-0.2)
    w01 = -1 + A_neg * (e1 + 1 + e1) - A_pos * (e1 + 1 + e2)
    w10 = -1 + A_neg * (e1 + 1 + e2) - A_pos * (e1 + 1 + e1)
    np.testing.assert_allclose(out.state.yy_w, [0.0, w01, w10, 0.0], rtol=0, atol=1e-12)
