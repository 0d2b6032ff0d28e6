"""Speed changes that must not change a result: our builds against Brian2's generic code (issue 15, item 1)."""

import re

import brian2 as b2
import numpy as np
import pytest

from brian_lcsnn import standalone
from brian_lcsnn.models import load_model
from brian_lcsnn.network import NetworkSpec
from brian_lcsnn.results import read_json
from brian_lcsnn.simulation import NetworkState, Simulator
from brian_lcsnn.topology import Geometry, competition_pairs

pytestmark = pytest.mark.standalone

GEOMETRY = Geometry(crop=8, kernel_size=4, stride=2, n_filters=3, architecture="LC")


def _spec():
    return NetworkSpec(
        geometry=GEOMETRY,
        input=load_model("input_poisson"),
        neuron=load_model("adaptive_lif"),
        xy=load_model("stdp_postpre"),
        normalisation=load_model("normalise_incoming"),
        yy=load_model("competition_fixed"),
        samples_per_chunk=4,
        time_per_sample=40 * b2.ms,
    )


def _loop_after_tick(build_dir) -> str:
    """The end of network.cpp's time step loop: after the clocks tick, up to the loop's closing brace."""
    source = (build_dir / "network.cpp").read_text()
    return re.search(r"->tick\(\);(.*?)\n    \}\n", source, re.S).group(1)


def _train_then_frozen(sim: Simulator):
    rng = np.random.default_rng(3)
    rates = rng.integers(0, 256, size=(7, GEOMETRY.n_inputs)) / 255 * 127.5
    state = NetworkState(rng.random(GEOMETRY.n_xy_parameters), np.full(GEOMETRY.n_yy, -5.0),
                         np.zeros(GEOMETRY.n_neurons))  # fmt: skip
    train = sim.run_chunk(rates[:4], np.ones(4), state, seed=5, plastic={"XY": True}, norm_target=25.6)
    # a partial frozen chunk: padded, so its state is the whole chunk's; then one whose state is dropped
    frozen = sim.run_chunk(rates[4:7], np.zeros(3), train.state, seed=6, plastic={}, norm_target=25.6)
    dropped = sim.run_chunk(rates[4:6], np.zeros(2), frozen.state, seed=7, plastic={}, norm_target=25.6,
                            keep_state=False)  # fmt: skip
    return train, frozen, dropped


def test_lean_builds_give_the_generic_results(build_root, tmp_path, monkeypatch):
    """The per-step std::clock() read is gone from our network.cpp and no delay is written into the results, and a
    train chunk, a padded frozen chunk and a frozen chunk that stops early give bit-identical counts, weights and
    thresholds to Brian2's own network.cpp and objects.cpp."""
    ours = Simulator(_spec(), build_root=build_root)
    ours.prepare()
    monkeypatch.setattr(standalone, "LEAN", False)
    generic = Simulator(_spec(), build_root=tmp_path)
    generic.prepare()
    monkeypatch.undo()
    assert generic.key != ours.key  # the two never share a build folder
    assert "std::clock()" in _loop_after_tick(generic.build_dir)
    assert "std::clock()" not in _loop_after_tick(ours.build_dir)
    # no synapse delay is written into the results (the package never reads them); weights and indices are
    for name, written in (("delay", False), ("delay_1", False), ("w", True), ("_synaptic_pre", True)):
        for projection in ("XY", "YY"):
            array = f"_dynamic_array_{projection}_{name}"
            if f"outfile_{array};" not in (generic.build_dir / "objects.cpp").read_text():
                continue  # YY has no second pathway
            assert (f"outfile_{array};" in (ours.build_dir / "objects.cpp").read_text()) == written, array
    # the run's time is still measured, once, after the loop
    assert "elapsed_realtime = (double)(current - start)" in (ours.build_dir / "network.cpp").read_text()

    results = _train_then_frozen(ours)
    expected = _train_then_frozen(generic)
    assert results[0].counts.sum() > 20, "the test network must spike"
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(got.counts, want.counts)
        assert got.complete and want.complete
        if want.state is not None:
            for name in ("xy_w", "yy_w", "theta"):
                np.testing.assert_array_equal(getattr(got.state, name), getattr(want.state, name))
    assert results[1].state is not None and results[2].state is None


def test_without_step_clock_leaves_other_sources_alone():
    """A network.cpp without exactly one per-step read (Brian2 2.10, OpenMP) comes back unchanged."""
    source = "while(x)\n{\n    f();\n}\n    Network::_globally_running = false;\n"
    assert standalone.without_step_clock(source) == source
    with_read = source.replace(
        "    f();\n",
        "    f();\n        current = std::clock();\n"
        "        elapsed_realtime = (double)(current - start)/(1 * CLOCKS_PER_SEC);\n",
    )
    moved = standalone.without_step_clock(with_read)
    assert moved.index("std::clock()") > moved.index("}")
    assert standalone.without_step_clock(with_read + with_read) == with_read + with_read


@pytest.mark.parametrize(
    "geometry",
    [
        GEOMETRY,
        Geometry(crop=8, kernel_size=4, stride=2, n_filters=3, architecture="C"),
        Geometry(crop=6, kernel_size=6, stride=1, n_filters=5, architecture="FC"),
        Geometry(crop=8, kernel_size=4, stride=4, n_filters=1, architecture="LC"),
        Geometry(crop=8, kernel_size=4, stride=2, n_filters=3, architecture="LC", yy_pairs="all"),
    ],
)
def test_yy_generator_makes_the_pairs_of_the_condition_in_their_order(geometry):
    """The YY synapses made by the generator (no test of every pair) are the condition's, in the same order."""
    b2.start_scope()
    group = b2.NeuronGroup(geometry.n_neurons, "v : 1")
    by_condition = b2.Synapses(group, group)
    by_condition.connect(condition=geometry.yy_condition())
    by_generator = b2.Synapses(group, group)
    by_generator.connect(**geometry.yy_connect())
    np.testing.assert_array_equal(by_generator.i[:], by_condition.i[:])
    np.testing.assert_array_equal(by_generator.j[:], by_condition.j[:])
    np.testing.assert_array_equal(
        np.stack([by_generator.i[:], by_generator.j[:]]), np.stack(competition_pairs(geometry))
    )
    assert ("j" in geometry.yy_connect()) == (geometry.yy_pairs == "competition")


def test_a_protocol_run_is_the_generic_builds_result(tiny_run, tmp_path, monkeypatch):
    """A whole tiny run (train with a learning curve, calibrate, test: frozen chunks carry the state on) gives the
    same scores.json, counts and states with our lean build as with Brian2's generic code."""
    from brian_lcsnn.protocol import load_protocol
    from brian_lcsnn.runner import run_protocol

    from .conftest import TINY_RUN, TINY_RUN_OVERRIDES

    monkeypatch.setattr(standalone, "LEAN", False)
    generic = run_protocol(load_protocol(TINY_RUN, TINY_RUN_OVERRIDES), tmp_path / "runs", build_root=tmp_path / "b",
                           progress=False)  # fmt: skip
    assert (generic / "scores.json").read_text() == (tiny_run / "scores.json").read_text()
    assert (generic / "curves").exists()
    for name in ("state.npz", *(str(p.relative_to(tiny_run)) for p in (tiny_run / "counts").glob("*.npz")),
                 *(str(p.relative_to(tiny_run)) for p in (tiny_run / "states").glob("*.npz"))):  # fmt: skip
        ours, theirs = np.load(tiny_run / name), np.load(generic / name)
        assert sorted(ours.files) == sorted(theirs.files), name
        for key in ours.files:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name}: {key}")
    for name in (p.relative_to(tiny_run) for p in (tiny_run / "curves").glob("*.json")):
        points = [{k: v for k, v in p.items() if k != "seconds"} for p in read_json(tiny_run / name)["points"]]
        theirs = [{k: v for k, v in p.items() if k != "seconds"} for p in read_json(generic / name)["points"]]
        assert points == theirs, name
