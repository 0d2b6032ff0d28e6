"""The network in Brian2: input X, hidden Y, plastic XY and competition YY, built from model files.

One build serves a whole protocol: everything that changes between phases or chunks of samples
(stimulus, which samples learn, weights, thresholds, the random seed) is a value set per run
(``run_args`` in C++ standalone), never a change of equations, so the structure compiles once.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import brian2 as b2
import numpy as np

from .models import ModelFile
from .topology import Geometry

__all__ = ["NetworkSpec", "BuiltNetwork", "build_network", "SCHEDULE"]

logger = logging.getLogger(__name__)

#: Synapses after resets: plasticity sees traces that include this step's spikes (the thesis's order).
#: Within the synapses slot, every projection runs on_post before on_pre (see models/stdp_postpre.yaml).
SCHEDULE = ["start", "groups", "thresholds", "resets", "synapses", "end"]
POST_BEFORE_PRE = {"pre": 1, "post": -1}


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that fixes the compiled structure of a network.

    Parameters
    ----------
    geometry : Geometry
        Sizes and connectivity.
    input, neuron, xy, normalisation, yy : ModelFile
        The model files (with protocol overrides already applied).
    samples_per_chunk : int
        Samples per compiled run; longer phases run in several chunks.
    time_per_sample : Quantity
        Presentation time of one sample (thesis: 250 ms).
    dt : Quantity
        Time step (thesis: 1 ms).
    """

    geometry: Geometry
    input: ModelFile
    neuron: ModelFile
    xy: ModelFile
    normalisation: ModelFile
    yy: ModelFile
    samples_per_chunk: int
    time_per_sample: b2.Quantity = field(default_factory=lambda: 250 * b2.ms)
    dt: b2.Quantity = field(default_factory=lambda: 1 * b2.ms)

    @property
    def steps_per_sample(self) -> int:
        return int(round(float(self.time_per_sample / self.dt)))

    @property
    def duration(self) -> b2.Quantity:
        # one extra step after the last sample runs its end-of-sample operations (normalisation)
        return self.samples_per_chunk * self.time_per_sample + self.dt


@dataclass
class BuiltNetwork:
    """The Brian2 objects of one network, with the per-run inputs."""

    spec: NetworkSpec
    network: b2.Network
    X: b2.NeuronGroup
    Y: b2.NeuronGroup
    XY: b2.Synapses
    YY: b2.Synapses
    spikes: b2.SpikeMonitor
    stimulus: b2.TimedArray  # (samples_per_chunk + 1, n_inputs) rates; the last row is the silent extra step
    learning_schedule: b2.TimedArray  # (samples_per_chunk + 1,) 1 for training samples
    rng: b2.NeuronGroup  # holds the seed of the random generator of a run


class _NamedClock(b2.Clock):
    """A clock hashed by its name, not by its id.

    Brian2 writes main.cpp by iterating over sets of clocks; id-based hashes order those lines differently
    in every process, which makes an unchanged build recompile. Hashing by name keeps main.cpp identical.
    """

    # Brian2 only lets a class's own properties through its attribute guard: re-expose Clock's
    dt = b2.Clock.dt
    dt_ = b2.Clock.dt_

    def __hash__(self):
        # Brian2's instance tracking hashes the clock before its name is set (and keeps that hash)
        return zlib.crc32(self.__dict__.get("_name", "").encode())


def _post_before_pre(synapses: b2.Synapses) -> None:
    # the rare pathway (Y spikes) carries the same-step test, so the hot one (X spikes) needs none
    for pathway in synapses._pathways:
        pathway.order = POST_BEFORE_PRE[pathway.prepost]


def _group_code(model: ModelFile, group, key: str, name: str, **kwargs):
    code = model.section(key)
    if code:
        group.run_regularly(code, name=name, **kwargs)


def build_network(spec: NetworkSpec) -> BuiltNetwork:
    """Create the groups, synapses and monitors of ``spec`` in the current Brian2 device."""
    g = spec.geometry
    T = spec.time_per_sample
    K = spec.samples_per_chunk
    step_clock = _NamedClock(dt=spec.dt, name="step_clock")
    sample_clock = _NamedClock(dt=T, name="sample_clock")
    stimulus = b2.TimedArray(np.zeros((K + 1, g.n_inputs)) * b2.Hz, dt=T, name="stimulus")
    learning_schedule = b2.TimedArray(np.zeros(K + 1), dt=T, name="learning_schedule")

    X = b2.NeuronGroup(
        g.n_inputs,
        spec.input.section("equations"),
        threshold=spec.input.section("threshold"),
        reset=spec.input.section("reset"),
        method="exact",
        namespace={**spec.input.parameters, "stimulus": stimulus},
        clock=step_clock,
        name="X",
    )
    _group_code(spec.input, X, "step", "X_step", when="groups", order=1)
    _group_code(spec.input, X, "sample_start", "X_sample_start", clock=sample_clock, when="start")

    Y = b2.NeuronGroup(
        g.n_neurons,
        b2.Equations(spec.neuron.section("equations")) + b2.Equations(spec.normalisation.section("target_equations")),
        threshold=spec.neuron.section("threshold"),
        reset=spec.neuron.section("reset"),
        method="exact",
        namespace={**spec.neuron.parameters, "learning_schedule": learning_schedule},
        clock=step_clock,
        name="Y",
    )
    _group_code(spec.neuron, Y, "step", "Y_step", when="groups", order=1)
    _group_code(spec.neuron, Y, "sample_start", "Y_sample_start", clock=sample_clock, when="start")
    # which samples learn is data of the run, not of the model
    Y.run_regularly("learning = learning_schedule(t)", clock=sample_clock, when="start", name="Y_learning")

    XY = b2.Synapses(
        X,
        Y,
        b2.Equations(spec.xy.section("equations")) + b2.Equations(spec.normalisation.section("synapse_equations")),
        on_pre=spec.xy.section("on_pre"),
        on_post=spec.xy.section("on_post"),
        namespace=dict(spec.xy.parameters),
        clock=step_clock,
        name="XY",
    )
    XY.connect(condition=g.xy_condition())
    _post_before_pre(XY)
    # sum and normalise once per sample, not every step (summing 10^5..10^6 weights each step would dominate)
    for updater in XY.summed_updaters.values():
        updater._clock = sample_clock
    XY.run_regularly(spec.normalisation.section("sample_end"), clock=sample_clock, when="groups", order=0, name="XY_normalise")
    _group_code(spec.xy, XY, "first_step_end", "XY_first_step_end", clock=sample_clock, when="end")

    YY = b2.Synapses(
        Y,
        Y,
        spec.yy.section("equations"),
        on_pre=spec.yy.section("on_pre"),
        on_post=spec.yy.section("on_post"),
        namespace=dict(spec.yy.parameters),
        clock=step_clock,
        name="YY",
    )
    YY.connect(condition=g.yy_condition())
    _post_before_pre(YY)
    _group_code(spec.yy, YY, "first_step_end", "YY_first_step_end", clock=sample_clock, when="end")

    spikes = b2.SpikeMonitor(Y, name="Y_spikes")
    rng = b2.NeuronGroup(1, "seed : integer", clock=step_clock, name="rng")
    network = b2.Network(X, Y, XY, YY, spikes, rng)
    network.schedule = SCHEDULE
    return BuiltNetwork(spec, network, X, Y, XY, YY, spikes, stimulus, learning_schedule, rng)
