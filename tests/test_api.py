"""Several simulators in one process (the notebook API): each owns its Brian2 device, and a chunk whose state
nobody reads stops after its samples."""

from dataclasses import replace

import numpy as np
import pytest

from brian_lcsnn.api import load_run
from brian_lcsnn.data import load_dataset
from brian_lcsnn.protocol import load_protocol
from brian_lcsnn.runner import _rates, initial_state, make_simulator, run_protocol
from brian_lcsnn.simulation import Simulator

from .conftest import FIXTURES, TINY_RUN, TINY_RUN_OVERRIDES

pytestmark = [pytest.mark.standalone, pytest.mark.network]

#: A tiny convolution network: another structure than the tiny LC run's
C_TINY = FIXTURES / "protocols" / "c_tiny.yaml"
C_TINY_OVERRIDES = ("network.n_filters=4", "simulation.samples_per_chunk=50", "phases.0.n=50", "phases.1.n=50",
                    "phases.2.n=50")  # fmt: skip


@pytest.fixture(scope="module")
def c_run(build_root, tmp_path_factory):
    protocol = load_protocol(C_TINY, C_TINY_OVERRIDES)
    return run_protocol(protocol, tmp_path_factory.mktemp("c_run"), build_root=build_root, progress=False)


@pytest.fixture(scope="module")
def images():
    return load_dataset("mnist").split("test")[0][:7]


def _chunk(sim, protocol, images, learning=0.0, keep_state=True, seed=1):
    """One chunk of ``images`` from the protocol's initial state (learning in every sample or none)."""
    state = initial_state(protocol, np.random.SeedSequence(0))
    keep = {} if keep_state else {"keep_state": False}  # the default: as every caller before keep_state existed
    return sim.run_chunk(_rates(protocol, images), np.full(len(images), learning), state, seed=seed,
                         plastic={"XY": learning > 0}, norm_target=protocol["network"]["mean_weight"] * 144,
                         **keep)  # fmt: skip


def _assert_same_chunk(a, b):
    np.testing.assert_array_equal(a.counts, b.counts)
    for key in ("xy_w", "yy_w", "theta"):
        np.testing.assert_array_equal(getattr(a.state, key), getattr(b.state, key), err_msg=key)


def test_feed_then_predict_then_rerun_in_one_process(tiny_run, build_root, images):
    run = load_run(tiny_run, build_root=build_root)
    fed = run.feed_label(3, seed=0)  # the runtime device, then the compiled build
    first = run.counts(images)
    assert fed["label"] == 3 and first.sum() > 0
    run.feed_label(5, seed=1)
    assert run.rerun("test") == run.scores["test"]
    np.testing.assert_array_equal(run.counts(images), first)
    np.testing.assert_array_equal(run.predict(images), run.predict(images[::-1])[::-1])


def test_two_loaded_runs_of_different_structures_in_turn_answer_as_each_alone(tiny_run, c_run, build_root, images):
    alone = {}
    for path in (tiny_run, c_run):
        run = load_run(path, build_root=build_root)
        alone[path] = run.counts(images), run.rerun("test")
        del run
    runs = {path: load_run(path, build_root=build_root) for path in (tiny_run, c_run)}
    for _ in range(2):
        for path, run in runs.items():
            counts, scores = alone[path]
            np.testing.assert_array_equal(run.counts(images), counts)
            assert run.rerun("test") == scores
    assert runs[tiny_run]._sim.key != runs[c_run]._sim.key


def test_a_simulator_keeps_its_device_while_others_are_prepared_and_run(build_root, images):
    lc, conv = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES), load_protocol(C_TINY, C_TINY_OVERRIDES)
    a = make_simulator(lc, build_root=build_root)
    a.prepare()
    learned, frozen = _chunk(a, lc, images, learning=1.0), _chunk(a, lc, images)  # A alone
    b = make_simulator(conv, build_root=build_root)
    b.prepare()  # another structure: another device
    assert _chunk(b, conv, images, learning=1.0).counts.sum() > 0
    runtime = Simulator(replace(a.spec, samples_per_chunk=1), device="runtime")
    assert _chunk(runtime, lc, images[:1]).counts.shape == (1, lc.geometry.n_neurons)  # Brian2's runtime in between
    _assert_same_chunk(_chunk(a, lc, images, learning=1.0), learned)
    _assert_same_chunk(_chunk(a, lc, images), frozen)
    assert not np.array_equal(learned.state.xy_w, frozen.state.xy_w)
    # a second simulator of A's structure, built while A lives, generates A's code: no recompile
    again = make_simulator(lc, build_root=build_root)
    again.prepare()
    assert not again.compiled_now
    _assert_same_chunk(_chunk(again, lc, images, learning=1.0), learned)


@pytest.mark.parametrize("device", ["cpp_standalone", pytest.param("runtime", marks=pytest.mark.runtime)])
def test_a_partial_chunk_whose_state_is_dropped_stops_after_its_samples(device, build_root, images):
    protocol = load_protocol(TINY_RUN, TINY_RUN_OVERRIDES)
    sim = make_simulator(protocol, device=device, build_root=build_root)
    if device == "runtime":  # numpy: a short chunk
        sim = Simulator(replace(sim.spec, samples_per_chunk=4), device="runtime")
    K, steps = sim.spec.samples_per_chunk, sim.spec.steps_per_sample
    for n, learning in ((1, 0.0), (3, 0.0), (3, 1.0)):
        padded = _chunk(sim, protocol, images[:n], learning)
        short = _chunk(sim, protocol, images[:n], learning, keep_state=False)
        assert padded.steps == padded.steps_asked == K * steps + 1 and padded.complete
        assert short.steps == short.steps_asked == n * steps + 1 and short.complete  # the step starting sample n
        assert short.state is None
        np.testing.assert_array_equal(short.counts, padded.counts)
        assert padded.counts.sum() > 0
    whole = _chunk(sim, protocol, np.resize(images, (K, 28, 28)), keep_state=False)  # every step, as ever
    assert whole.steps == whole.steps_asked == K * steps + 1


def test_predict_runs_only_the_images_it_is_given(tiny_run, build_root, images):
    run = load_run(tiny_run, build_root=build_root)
    sim = run._simulator()
    results = []
    run_chunk = sim.run_chunk
    sim.run_chunk = lambda *args, **kwargs: results.append(run_chunk(*args, **kwargs)) or results[-1]
    counts = run.counts(images[:1])
    assert [r.steps for r in results] == [sim.spec.steps_per_sample + 1]  # not samples_per_chunk samples
    # the counts of the padded chunk (as before: the state is carried, so the chunk runs to its end)
    sim.run_chunk = run_chunk
    from brian_lcsnn.runner import _run_phase

    phase = {"type": "test", "name": "predict", "n": 1, "sampling": "ordered"}
    _, out = _run_phase(sim, phase, images[:1], np.zeros(1, dtype=np.uint8), run.state, run.protocol,
                        np.random.SeedSequence(0), progress=False)  # fmt: skip
    np.testing.assert_array_equal(counts.reshape(1, -1), out.counts)
