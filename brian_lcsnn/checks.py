"""Everything ``lcsnn run`` would reject, checked before anything is compiled or simulated.

`check_protocol` is what ``lcsnn check`` runs, and `run_protocol` runs it too before it compiles: the model
parameters' ranges, the network's equations built on Brian2's runtime device (a two-neuron copy of the
network, run for no time: no compilation), and the data set (for ``dataset.path`` the IDX files' headers and
labels) against the protocol's crop, split sizes and the memory the phases need. `check_dataset` repeats the
data checks on a loaded data set. Each problem is one line (`ProtocolError`, `ModelError` or `DataError`).
"""

from __future__ import annotations

import gc
import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np

from .data import DataError, _find_idx_files, read_idx
from .models import ModelError
from .protocol import PHASE_SPLIT, Protocol, ProtocolError, phase_split

__all__ = ["check_protocol", "check_parameters", "check_network", "check_dataset", "available_memory",
           "MAX_TIME_PER_SAMPLE_S", "MAX_STEPS_PER_SAMPLE"]  # fmt: skip

#: The longest presentation accepted (the thesis: 250-350 ms), and the most time steps per sample.
MAX_TIME_PER_SAMPLE_S = 10.0
MAX_STEPS_PER_SAMPLE = 100_000
#: MNIST's layout (a dataset from ``dataset.path`` is read from its IDX headers).
_MNIST = {"sizes": {"train": 50000, "calibration": 10000, "test": 10000}, "shape": (28, 28)}
_CALIBRATION = 10000  # the images at the end of the training file held out for calibration (load_dataset)


def check_protocol(protocol: Protocol) -> None:
    """Everything a run would reject before it simulates (no compilation; the data set's files are peeked)."""
    check_timing(protocol)
    check_parameters(protocol)
    check_network(protocol)
    layout = _layout(protocol)
    _check_layout(protocol, *layout)


def check_timing(protocol: Protocol) -> None:
    """``time_per_sample`` at most `MAX_TIME_PER_SAMPLE_S` and at most `MAX_STEPS_PER_SAMPLE` steps of ``dt``."""
    from .models import parse_quantity

    sim, where = protocol["simulation"], f"{protocol.path}: simulation"
    T, dt = float(parse_quantity(sim["time_per_sample"])), float(parse_quantity(sim["dt"]))
    if T > MAX_TIME_PER_SAMPLE_S:
        raise ProtocolError(f"{where}.time_per_sample: {sim['time_per_sample']} is longer than the "
                            f"{MAX_TIME_PER_SAMPLE_S:g} s a presentation may last (the thesis: 250 ms)")  # fmt: skip
    if dt > T:
        raise ProtocolError(f"{where}.dt: {sim['dt']} is longer than time_per_sample ({sim['time_per_sample']})")
    if T / dt > MAX_STEPS_PER_SAMPLE:
        raise ProtocolError(f"{where}.dt: {sim['dt']} gives {T / dt:.0f} steps per sample, more than "
                            f"{MAX_STEPS_PER_SAMPLE:,}")  # fmt: skip


def check_parameters(protocol: Protocol) -> None:
    """The ranges the step semantics need: every time constant (a ``tau*`` parameter) > 0, and
    ``refractory_steps`` a whole number >= 1 (a spike's own step is refractory)."""
    import brian2

    overridden = protocol["parameters"]
    for role, model in protocol.model_files().items():
        for name, value in model.parameters.items():
            where = (f"{protocol.path}: parameters.{role}.{name}" if name in (overridden.get(role) or {})
                     else f"{model.path}: parameters.{name}")  # fmt: skip
            number = float(value / brian2.second) if brian2.get_dimensions(value) == brian2.second.dim else None
            if name.startswith("tau") and number is not None and not number > 0:
                raise ProtocolError(f"{where}: a time constant must be > 0, got {value}")
            if name == "refractory_steps":
                steps = float(value) if brian2.get_dimensions(value).is_dimensionless else float("nan")
                if not (steps >= 1 and steps == int(steps)):
                    raise ProtocolError(f"{where}: must be a whole number of steps >= 1, got {value}")


#: The object that failed (Brian2's name, by prefix, longest first) -> the model role and section it came from.
_OBJECT_SECTIONS = [
    (f"{group}{suffix}", role, section)
    for group, role, pre in (("XY", "xy", "synapse"), ("YY", "yy", "synapse"), ("X", "input", "neuron"),
                             ("Y", "neuron", "neuron"))  # fmt: skip
    for suffix, section in (
        (("_pre", "on_pre"), ("_post", "on_post"), ("_transmit", "transmit"), ("_first_step_end", "first_step_end"),
         ("_step_end", "step_end"), ("_normalise", "sample_end"), ("_summed_variable", "synapse_equations"),
         ("_mask", "equations"), ("", "equations"))
        if pre == "synapse"
        else (("_spike_thresholder", "threshold"), ("_spike_resetter", "reset"), ("_step", "step"),
              ("_sample_start", "sample_start"), ("_learning", "equations"), ("", "equations"))
    )  # fmt: skip
] + [("kernels_step_end", "xy", "kernel_step_end"), ("kernels_normalise", "normalisation", "sample_end"),
     ("kernel_sums", "normalisation", "synapse_equations"), ("channels", "normalisation", "target_equations"),
     ("kernels", "xy", "kernel_equations")]  # fmt: skip
_OBJECT_SECTIONS.sort(key=lambda item: -len(item[0]))
_NORMALISATION_OBJECTS = ("_summed_variable", "_normalise")


def check_network(protocol: Protocol) -> None:
    """Build the network's equations as Brian2 would, without compiling: each equation section parsed, then a
    two-neuron copy of the network created and run for no time on the runtime device (code generation checks
    every name and unit). A rejection is one `ModelError` naming the model file and its section."""
    import brian2 as b2
    from brian2.devices.device import reset_device
    from brian2.utils.logger import catch_logs

    from .network import NetworkSpec, build_network
    from .runner import _root_cause, make_simulator
    from .topology import Geometry

    models = protocol.model_files()
    head = f"{protocol.path}: the network cannot be built from its model files"
    for role, model in models.items():
        for section in ("equations", "target_equations", "synapse_equations", "kernel_equations"):
            if model.section(section):
                try:
                    b2.Equations(model.section(section))
                except Exception as err:
                    raise ModelError(f"{head}: {model.path} section {section!r} (models.{role}): "
                                     f"{_root_cause(err)}") from None  # fmt: skip
    full = make_simulator(protocol, "runtime").spec
    g = full.geometry
    small = Geometry(g.kernel_size, g.kernel_size, g.stride, min(g.n_filters, 2), g.architecture, g.yy_pairs)
    spec = NetworkSpec(small, full.input, full.neuron, full.xy, full.normalisation, full.yy, 1,
                       full.time_per_sample, full.dt)  # fmt: skip
    target = b2.prefs.codegen.target
    problem = built = None
    # Brian2's messages while building the throw-away copy (unused objects deleted, ...) are not the user's
    with catch_logs():
        try:
            b2.set_device("runtime")
            b2.prefs.codegen.target = "numpy"
            built = build_network(spec)
            built.norm_target_group  # noqa: B018 -- the property raises when no model declares norm_target
            built.network.run(0 * b2.second, namespace={})
        except Exception as err:
            problem = _locate(err, models, head)
        finally:
            built = None
            b2.prefs.codegen.target = target
            reset_device()  # the device active before (with its build options)
            gc.collect()  # the copy's objects go now, while their warnings are caught
    if problem is not None:
        raise ModelError(problem)


def _locate(err: BaseException, models: dict, head: str) -> str:
    """The one-line message of a Brian2 error while building: the model file and section of the failed object."""
    from .runner import _root_cause

    obj = getattr(err, "brian_obj", None)
    name = str(getattr(obj, "name", "") or "")
    if not name:
        match = re.search(r"object named '([^']+)'", str(err))
        name = match.group(1) if match else ""
    if "norm_target" in str(err) and not name:
        name = "XY_normalise"
    where = next(((role, section) for prefix, role, section in _OBJECT_SECTIONS if name.startswith(prefix)), None)
    if where is not None and any(part in name for part in _NORMALISATION_OBJECTS):
        where = ("normalisation", where[1])
    if where is None:
        return f"{head}: {_root_cause(err)}"
    role, section = where
    return f"{head}: {models[role].path} section {section!r} (models.{role}): {_root_cause(err)}"


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``; else the physical memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _phase_bytes(phase: dict, n_neurons: int) -> int:
    """What a phase holds in memory at once: its sample indices (int64), and for an evaluation phase its spike
    counts (uint16) with the readout's float64 copy of them."""
    n = int(phase["n"])
    return 8 * n + (n * n_neurons * (2 + 8) if phase["type"] != "train" else 0)


def _layout(protocol: Protocol):
    """``(sizes of the splits, image shape, bad labels or None, where)`` of the protocol's data set: MNIST's
    known layout, or a ``dataset.path`` folder's IDX headers and label files (the images are not read)."""
    ds = protocol["dataset"]
    if ds["path"] is None:
        return dict(_MNIST["sizes"]), _MNIST["shape"], None, "MNIST"
    where = f"{protocol.path}: dataset.path"
    try:
        files = _find_idx_files(Path(ds["path"]).expanduser())
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    shapes = [_idx_shape(files[0]), _idx_shape(files[2])]
    labels = [read_idx(files[1]), read_idx(files[3])]
    for file, shape, y in ((files[0], shapes[0], labels[0]), (files[2], shapes[1], labels[1])):
        if len(shape) != 3:
            raise DataError(f"{file}: not an IDX images file (shape {shape})")
        if shape[0] != len(y):
            raise DataError(f"{file}: {shape[0]} images but {len(y)} labels in its labels file")
    n_train = shapes[0][0]
    if n_train <= _CALIBRATION:
        raise DataError(f"{files[0]}: {n_train} training images, but the calibration split alone takes "
                        f"the last {_CALIBRATION}")  # fmt: skip
    sizes = {"train": n_train - _CALIBRATION, "calibration": _CALIBRATION, "test": shapes[1][0]}
    bad = _bad_labels(files[1], labels[0]) or _bad_labels(files[3], labels[1])
    return sizes, (min(shapes[0][1], shapes[1][1]), min(shapes[0][2], shapes[1][2])), bad, str(ds["path"])


def _idx_shape(path: Path) -> tuple:
    """The shape in an IDX file's header (gzip'd or not), without reading the data."""
    with open(path, "rb") as raw:
        start = raw.read(2)
    opener = gzip.open if start == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as handle:
            head = handle.read(16)
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: corrupt or truncated ({err})") from None
    magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
    ndim = {2051: 3, 2049: 1}.get(magic)
    if ndim is None or len(head) < 4 + 4 * ndim:
        raise DataError(f"{path}: not an IDX file (magic {magic}, expected 2051 for images or 2049 for labels)")
    return struct.unpack(f">{ndim}I", head[4 : 4 + 4 * ndim])


def _bad_labels(path, labels: np.ndarray) -> str | None:
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        return f"{path}: labels must be digits 0..9, label {int(labels[bad[0]])} at index {int(bad[0])}"
    return None


def check_dataset(protocol: Protocol, dataset) -> None:
    """The checks of `check_protocol` on a loaded data set (what `run_protocol` does once the data is loaded)."""
    sizes = {split: len(dataset.split(split)[1]) for split in PHASE_SPLIT.values()}
    shape = tuple(min(dataset.split(s)[0].shape[1 + k] for s in sizes) for k in (0, 1))
    bad = None
    for split in sizes:
        labels = dataset.split(split)[1]
        if len(labels) and int(labels.max()) > 9:
            k = int(np.flatnonzero(labels > 9)[0])
            bad = (
                f"{dataset.name}: labels must be digits 0..9, label {int(labels[k])} at index {k} of the {split} split"
            )
            break
    _check_layout(protocol, sizes, shape, bad, dataset.name)


def _check_layout(protocol: Protocol, sizes: dict, shape: tuple, bad_labels: str | None, name: str) -> None:
    p = protocol.path
    if bad_labels:
        raise DataError(bad_labels)
    crop = protocol["dataset"]["crop"]
    if crop > min(shape):
        raise ProtocolError(f"{p}: dataset.crop: {crop} is larger than the {shape[0]} x {shape[1]} images of {name}")
    for k, phase in enumerate(protocol["phases"]):
        if phase["type"] in PHASE_SPLIT:
            split, skip = phase_split(phase)
            available = sizes[split] - skip
            needed = 1 if phase["sampling"] == "with_replacement" else phase["n"]
            if needed > available:
                raise ProtocolError(f"{p}: phases[{k}]: {phase['n']} {phase['sampling']} images from the "
                                    f"{split} split of {name} after skipping {skip}, but it has "
                                    f"{sizes[split]}")  # fmt: skip
        for key, n in (phase.get("evaluate") or {}).items():
            if n > sizes[PHASE_SPLIT[key]]:
                raise ProtocolError(f"{p}: phases[{k}].evaluate.{key}: {n} images, but the "
                                    f"{PHASE_SPLIT[key]} split of {name} has {sizes[PHASE_SPLIT[key]]}")  # fmt: skip
    n_neurons = protocol.geometry.n_neurons
    memory = available_memory()
    for k, phase in enumerate(protocol["phases"]):
        if phase["type"] in PHASE_SPLIT:
            need = _phase_bytes(phase, n_neurons)
            if need > memory:
                raise ProtocolError(f"{p}: phases[{k}].n: {phase['n']:,} samples need about {need / 2**30:,.1f} GiB "
                                    f"(indices and spike counts of {n_neurons:,} neurons), more than the "
                                    f"{memory / 2**30:,.1f} GiB of memory available")  # fmt: skip
