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

from . import standalone
from .models import ModelFile
from .topology import Geometry

__all__ = ["NetworkSpec", "BuiltNetwork", "build_network", "SCHEDULE"]

logger = logging.getLogger(__name__)

#: Synapses after resets: plasticity sees traces that include this step's spikes (the thesis's order).
#: Within the synapses slot, every projection runs on_post before on_pre (see `_synapses`).
SCHEDULE = ["start", "groups", "thresholds", "resets", "synapses", "end"]
PATHWAY_ORDER = {"post": -1, "pre": 1, "transmit": 3}


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


#: The groups that hold each model's variables (by the names build_network gives them).
_ROLE_GROUPS = {
    "input": ("X",),
    "neuron": ("Y",),
    "xy": ("XY", "kernels"),
    "normalisation": ("Y", "XY", "kernels", "channels", "kernel_sums"),
    "yy": ("YY",),
}


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
    kernels: b2.NeuronGroup | None  # C networks: the shared kernels (XY weights link into them)
    stimulus: b2.TimedArray  # (samples_per_chunk + 1, n_inputs) rates; the last row is the silent extra step
    learning_schedule: b2.TimedArray  # (samples_per_chunk + 1,) 1 for training samples
    rng: b2.NeuronGroup  # holds the seed of the random generator of a run, and where a run stops (`STOP_RUN`)
    voltages: b2.StateMonitor | None = None  # Y's v every step, only when asked (single presentations)

    @property
    def norm_target_group(self):
        """The group whose shared ``norm_target`` a run sets: wherever the normalisation model declares it."""
        group = next(
            (g for g in (self.kernels, self.Y, self.XY) if g is not None and "norm_target" in g.variables), None
        )
        if group is None:
            raise ValueError("the normalisation model declares no shared 'norm_target' (in its target_equations, "
                             "synapse_equations or kernel_equations)")  # fmt: skip
        return group

    def runtime_parameters(self) -> list[tuple]:
        """``(group, name, value)`` of every runtime parameter (`ModelFile.runtime_parameters`): for each group
        of the model's role that declares it. A run sets them (run_args), so their values are not compiled."""
        objects = {obj.name: obj for obj in self.network.objects}
        out = []
        for role, names in _ROLE_GROUPS.items():
            model = getattr(self.spec, role)
            for param in model.runtime_parameters:
                for group in (objects[n] for n in names if n in objects):
                    if param in group.variables:
                        out.append((group, param, model.parameters[param]))
        return out

    @property
    def xy_weights(self):
        """The group whose ``w`` is the learnable XY state (the kernels of a C network, else the synapses)."""
        return self.kernels if self.kernels is not None else self.XY


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


def _synapses(model: ModelFile, source, target, equations, connect: dict, name: str, step_clock, sample_clock):
    """Synapses from a synapse model file, in the order of a step (slot ``synapses``):

    on_post (-1), on_pre (1), step_end (2, every step), transmit (3, a second presynaptic pathway that
    delivers the spike with the weight after this step's update). on_post runs before on_pre so that the rare
    pathway (Y spikes) carries the same-step test and the hot one (X spikes) needs none.
    """
    on_pre = model.section("on_pre")
    if model.section("transmit"):
        on_pre = {"pre": on_pre, "transmit": model.section("transmit")}
    syn = b2.Synapses(source, target, equations, on_pre=on_pre, on_post=model.section("on_post"),
                      namespace=dict(model.compiled_parameters), clock=step_clock, name=name)  # fmt: skip
    syn.connect(**connect)
    for pathway in syn._pathways:
        pathway.order = PATHWAY_ORDER[pathway.objname if pathway.objname in PATHWAY_ORDER else pathway.prepost]
    _group_code(model, syn, "step_end", f"{name}_step_end", when="synapses", order=2)
    _group_code(model, syn, "first_step_end", f"{name}_first_step_end", clock=sample_clock, when="end")
    return syn


@b2.implementation(
    "cpp",
    """
    int lcsnn_stop_run(const bool stop)
    {
        if (stop)
            Network::_globally_stopped = true;  // the current step ends, then Network::run returns
        return stop;
    }
    """,
)
@b2.check_units(stop=1, result=1)
def lcsnn_stop_run(stop):
    """Ends the run after the current step when ``stop`` (Network::run resets the flag when it starts)."""
    if np.any(stop):
        b2.Network._globally_stopped = True
    return np.asarray(stop, dtype=np.int32)


#: At the start of every sample: stop the run once ``stop_after`` samples (a run_arg, default: never) are done.
#: A chunk of n < samples_per_chunk samples whose end state nobody reads then costs n samples, not a whole
#: chunk; the step that starts sample n still runs (its spikes belong to no sample), then the binary ends.
STOP_RUN = "stopping = lcsnn_stop_run(int(t / time_per_sample + 0.5) >= stop_after)"


def _group_code(model: ModelFile, group, key: str, name: str, **kwargs):
    code = model.section(key)
    if code:
        group.run_regularly(code, name=name, **kwargs)


def build_network(spec: NetworkSpec, record_voltages: bool = False) -> BuiltNetwork:
    """Create the groups, synapses and monitors of ``spec`` in the current Brian2 device.

    ``record_voltages`` adds a monitor of every Y neuron's v (for showing single presentations, not for runs
    over thousands of samples).
    """
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
        namespace={**spec.input.compiled_parameters, "stimulus": stimulus},
        clock=step_clock,
        name="X",
    )
    _group_code(spec.input, X, "step", "X_step", when="groups", order=1)
    _group_code(spec.input, X, "sample_start", "X_sample_start", clock=sample_clock, when="start")

    shared = g.architecture == "C"
    y_equations = b2.Equations(spec.neuron.section("equations"))
    if not shared:
        y_equations += b2.Equations(spec.normalisation.section("target_equations"))
    Y = b2.NeuronGroup(
        g.n_neurons,
        y_equations,
        threshold=spec.neuron.section("threshold"),
        reset=spec.neuron.section("reset"),
        method="exact",
        namespace={**spec.neuron.compiled_parameters, "learning_schedule": learning_schedule},
        clock=step_clock,
        name="Y",
    )
    _group_code(spec.neuron, Y, "step", "Y_step", when="groups", order=1)
    _group_code(spec.neuron, Y, "sample_start", "Y_sample_start", clock=sample_clock, when="start")
    # which samples learn is data of the run, not of the model
    Y.run_regularly("learning = learning_schedule(t)", clock=sample_clock, when="start", name="Y_learning")

    if shared:
        kernels = _kernels(spec, learning_schedule, step_clock, sample_clock)
        xy_equations = b2.Equations(spec.xy.section("equations")) + b2.Equations("kernel_index : integer (constant)")
        XY = _synapses(spec.xy, X, Y, xy_equations, {"condition": g.xy_condition()}, "XY", step_clock, sample_clock)
        XY.kernel_index = g.kernel_index_expression()
        XY.w = b2.linked_var(kernels.group, "w", index="kernel_index")
    else:
        kernels = None
        xy_equations = b2.Equations(spec.xy.section("equations")) + b2.Equations(
            spec.normalisation.section("synapse_equations")
        )
        XY = _synapses(spec.xy, X, Y, xy_equations, {"condition": g.xy_condition()}, "XY", step_clock, sample_clock)
        # sum and normalise once per sample, not every step (summing 10^5..10^6 weights each step would dominate)
        for updater in XY.summed_updaters.values():
            updater._clock = sample_clock
        # after the sums (Brian2 runs them at order -1): the target's part (once per neuron), then the synapses'
        _group_code(
            spec.normalisation, Y, "target_sample_end", "Y_normalise", clock=sample_clock, when="groups", order=0
        )
        XY.run_regularly(spec.normalisation.section("sample_end"), clock=sample_clock, when="groups", order=1,
                         name="XY_normalise")  # fmt: skip
    yy_equations = b2.Equations(spec.yy.section("equations"))
    if g.yy_pairs == "all":
        yy_equations += b2.Equations("competing : boolean (constant)")
    # our C++ builds make the competing pairs by a generator; runtime, CUDA and the generic build by the condition
    lean = standalone.LEAN and isinstance(b2.get_device(), standalone.LcsnnStandaloneDevice)
    yy_connect = g.yy_connect() if lean else {"condition": g.yy_condition()}
    YY = _synapses(spec.yy, Y, Y, yy_equations, yy_connect, "YY", step_clock, sample_clock)
    if g.yy_pairs == "all":
        # the thesis code: the whole Y x Y matrix learns within a sample, and after every sample in which
        # it learned, the weights between neurons that do not compete are zeroed again
        YY.competing = g.competing_condition()
        if "plastic" in YY.variables:
            YY.run_regularly("w = w * (1 - plastic * (1 - int(competing)))", clock=sample_clock, when="start",
                             name="YY_mask")  # fmt: skip

    spikes = b2.SpikeMonitor(Y, name="Y_spikes")
    rng = b2.NeuronGroup(1, "seed : integer\nstop_after : integer (shared)\nstopping : integer", clock=step_clock,
                         namespace={"time_per_sample": T, "lcsnn_stop_run": lcsnn_stop_run}, name="rng")  # fmt: skip
    rng.stop_after = K + 1  # never: a run without the run_arg presents every sample and the extra step
    rng.run_regularly(STOP_RUN, clock=sample_clock, when="start", name="rng_stop")
    # v as Y's threshold tests it (after the leak and the step's input, before the reset): a spike at step t is a
    # trace that reaches v_thresh + theta at t, and step 0 of a sample is already that sample's. Brian2's default
    # (the start of a step) would show every step one step late and lose each sample's last step.
    voltages = None
    if record_voltages:
        voltages = b2.StateMonitor(Y, "v", record=True, name="Y_voltages", when="thresholds", order=Y.order - 1)
    network = b2.Network(X, Y, XY, YY, spikes, rng, *(kernels.contained if kernels is not None else ()))
    if voltages is not None:
        network.add(voltages)
    network.schedule = SCHEDULE
    built = BuiltNetwork(spec, network, X, Y, XY, YY, spikes, kernels.group if kernels is not None else None,
                         stimulus, learning_schedule, rng, voltages)  # fmt: skip
    built.norm_target_group  # a model without it fails here, at build time, not in the first run  # noqa: B018 -- the attribute access is the check
    return built


@dataclass
class _Kernels:
    group: b2.NeuronGroup
    contained: tuple


def _kernels(spec: NetworkSpec, learning_schedule, step_clock, sample_clock) -> _Kernels:
    """The shared kernels of a C network, clamped every step and normalised per channel every sample."""
    g = spec.geometry
    kk = g.kernel_size**2
    group = b2.NeuronGroup(
        g.n_filters * kk,
        b2.Equations(spec.xy.section("kernel_equations"))
        + b2.Equations(spec.normalisation.section("kernel_equations")),
        namespace={**spec.xy.compiled_parameters, "learning_schedule": learning_schedule},
        clock=step_clock,
        name="kernels",
    )
    group.run_regularly("learning = learning_schedule(t)", clock=sample_clock, when="start", name="kernels_learning")
    # after every synapse's increments of the step (pathways -1, 1), before the spikes are transmitted (3)
    group.run_regularly(spec.xy.section("kernel_step_end"), when="synapses", order=2, name="kernels_step_end")
    channels = b2.NeuronGroup(g.n_filters, spec.normalisation.section("target_equations"), clock=sample_clock,
                              name="channels")  # fmt: skip
    sums = b2.Synapses(group, channels, spec.normalisation.section("synapse_equations"), clock=sample_clock,
                       name="kernel_sums")  # fmt: skip
    sums.connect(j=f"i // {kk}")
    group.w_total = b2.linked_var(channels, "w_total", index=np.arange(g.n_filters * kk) // kk)
    group.run_regularly(spec.normalisation.section("sample_end"), clock=sample_clock, when="groups", order=0,
                        name="kernels_normalise")  # fmt: skip
    return _Kernels(group, (group, channels, sums))
