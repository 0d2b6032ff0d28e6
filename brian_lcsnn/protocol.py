"""Protocols: YAML files that name the data, the network, its model files, the seed and the phases.

The whole file is checked before anything runs; every problem is one line naming the file, the key and
what is wrong (`ProtocolError`). ``--set dotted.key=value`` overrides any value before the check.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import LcsnnError
from .models import ModelError, load_model, load_yaml, parse_quantity, read_yaml, shipped_folder
from .topology import ARCHITECTURES, YY_PAIRS, Geometry, GeometryError

__all__ = [
    "ProtocolError",
    "Protocol",
    "load_protocol",
    "protocols_dir",
    "resolve_protocol",
    "apply_overrides",
    "is_plastic",
    "phase_split",
    "PHASE_TYPES",
    "DEFAULTS",
]

logger = logging.getLogger(__name__)

PHASE_TYPES = ("train", "calibrate", "test", "lock", "unlock", "clear")
PROJECTIONS = ("XY", "YY")
SAMPLINGS = ("with_replacement", "shuffled", "ordered")
#: The data split each phase type draws from (the thesis's split).
PHASE_SPLIT = {"train": "train", "calibrate": "calibration", "test": "test"}
SPLITS = ("train", "calibration", "test")

#: Every key a protocol may have, with its default (None: required or optional without default).
DEFAULTS = {
    "name": None,
    "description": "",
    "seed": 1,
    "dataset": {"name": "mnist", "path": None, "crop": 20, "intensity": "127.5 Hz"},
    "network": {
        "architecture": "LC",
        "n_filters": 25,
        "kernel_size": 12,
        "stride": 4,
        "mean_weight": 0.4,
        "c_w": -100.0,
        "yy_init": "constant",
        "yy_pairs": "competition",
    },  # fmt: skip
    "models": {
        "input": "input_thesis",
        "neuron": "adaptive_lif",
        "xy": "stdp_postpre",
        "normalisation": "normalise_incoming",
        "yy": "competition_fixed",
    },
    "parameters": {"input": {}, "neuron": {}, "xy": {}, "normalisation": {}, "yy": {}},
    "simulation": {
        "device": "cpp_standalone",
        "time_per_sample": "250 ms",
        "dt": "1 ms",
        "samples_per_chunk": 1000,
        "float": "float64",
        "threads": 1,
    },
    "readout": {"linear": "logistic", "top_n": [], "showcase": 3},
    "phases": None,
}
#: The keys each phase type takes: train/calibrate/test present samples; lock, unlock and clear change a
#: projection between them (lock: freeze, optionally at a value; clear: set to 0), never the equations.
PHASE_KEYS = {
    "train": ("type", "name", "n", "sampling", "learn", "evaluate_every", "evaluate"),
    "calibrate": ("type", "name", "n", "sampling", "split", "skip"),
    "test": ("type", "name", "n", "sampling", "split", "skip"),
    "lock": ("type", "name", "projection", "value"),
    "unlock": ("type", "name", "projection"),
    "clear": ("type", "name", "projection"),
}
DEFAULT_SAMPLING = {"train": "with_replacement", "calibrate": "ordered", "test": "ordered"}
#: A train phase's learning curve: every ``evaluate_every`` samples, the first ``calibrate`` images of the
#: calibration split and the first ``test`` images of the test split, with learning off.
EVALUATE_KEYS = {"calibrate": "calibration", "test": "test"}
#: MNIST's split sizes (a dataset from ``dataset.path`` is checked when it is loaded).
MNIST_SPLIT_SIZES = {"train": 50000, "calibration": 10000, "test": 10000}


class ProtocolError(LcsnnError, ValueError):
    """A protocol that cannot run; the message is one line naming the file and the key."""


@dataclass(frozen=True)
class Protocol:
    """A checked protocol: ``data`` is the resolved mapping (defaults filled in), ``path`` its file."""

    path: Path
    data: dict

    def __getitem__(self, key):
        return self.data[key]

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def geometry(self) -> Geometry:
        net = self.data["network"]
        crop = self.data["dataset"]["crop"]
        return Geometry(crop, net["kernel_size"], net["stride"], net["n_filters"], net["architecture"], net["yy_pairs"])

    def model_files(self) -> dict:
        """The five model files with the protocol's parameter overrides applied."""
        base = self.path.parent
        return {
            role: _load_role_model(role, ref, base, self.data["parameters"][role], self.path)
            for role, ref in self.data["models"].items()
        }


_MODEL_KIND = {"input": "input", "neuron": "neuron", "xy": "synapse", "normalisation": "normalisation", "yy": "synapse"}


def _load_role_model(role, ref, base: Path, overrides, path):
    where = f"{path}: models.{role}"
    candidate = Path(ref)
    if candidate.suffix in (".yaml", ".yml") and not candidate.is_absolute() and (base / candidate).exists():
        candidate = base / candidate
    model = load_model(candidate, _MODEL_KIND[role], where)
    return model.with_parameters(overrides, f"{path}: parameters.{role}")


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Apply ``dotted.key=value`` strings (values read as YAML; list items by index: ``phases.0.n=100``)."""
    data = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ProtocolError(f"{where}: --set {item!r}: expected dotted.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            value = text
        node = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ProtocolError(
                        f"{where}: --set {key}: {'.'.join(parts[: depth + 1])} is not an index of the list"
                    )
                part = int(part)
            elif not isinstance(node, dict):
                raise ProtocolError(f"{where}: --set {key}: {'.'.join(parts[:depth])} is not a mapping")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return data


def _check_keys(mapping, allowed, file, prefix=""):
    if not isinstance(mapping, dict):
        raise ProtocolError(
            f"{file}: {prefix.rstrip('.') or 'protocol'}: expected a mapping, got {type(mapping).__name__}"
        )
    for key in mapping:
        if key not in allowed:
            raise ProtocolError(f"{file}: {prefix}{key}: unknown key (allowed: {', '.join(allowed)})")


def _int(value, where, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{where}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ProtocolError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ProtocolError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _choice(value, choices, where):
    if value not in choices:
        raise ProtocolError(f"{where}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _quantity(value, unit, where):
    import brian2

    try:
        q = parse_quantity(value, where)
    except ModelError as err:
        raise ProtocolError(str(err)) from None
    if brian2.get_dimensions(q) != brian2.get_dimensions(unit) or float(q / unit) <= 0:
        raise ProtocolError(f"{where}: expected a positive quantity in units of {unit!r}, got {value!r}")
    return q


def validate(data: dict, path: Path) -> dict:
    """Fill in defaults and check every value; returns the resolved mapping."""
    w = str(path)
    _check_keys(data, list(DEFAULTS), w)
    out = {}
    for section, default in DEFAULTS.items():
        if isinstance(default, dict):
            given = data.get(section)
            given = {} if given is None else given
            _check_keys(given, list(default), w, f"{section}.")
            merged = {}
            for key, value in default.items():
                sub = given.get(key, value)
                if isinstance(value, dict):
                    if not isinstance(sub, dict):
                        raise ProtocolError(f"{w}: {section}.{key}: expected a mapping of parameter: value")
                    sub = dict(sub)
                merged[key] = copy.deepcopy(sub)
            out[section] = merged
        else:
            out[section] = copy.deepcopy(data.get(section, default))
    out["name"] = out["name"] or path.stem
    if not isinstance(out["name"], str):
        raise ProtocolError(f"{w}: name: expected a string")
    if not isinstance(out["description"], str):
        raise ProtocolError(f"{w}: description: expected a string")
    _int(out["seed"], f"{w}: seed", 0)

    ds = out["dataset"]
    if not isinstance(ds["name"], str):
        raise ProtocolError(f"{w}: dataset.name: expected a string")
    if ds["path"] is not None and not isinstance(ds["path"], str):
        raise ProtocolError(f"{w}: dataset.path: expected a folder path")
    _int(ds["crop"], f"{w}: dataset.crop", 1)
    if ds["crop"] > 28 and ds["path"] is None:
        raise ProtocolError(f"{w}: dataset.crop: {ds['crop']} is larger than the 28 x 28 MNIST images")
    _quantity(ds["intensity"], __import__("brian2").Hz, f"{w}: dataset.intensity")

    net = out["network"]
    _choice(net["architecture"], ARCHITECTURES, f"{w}: network.architecture")
    for key in ("n_filters", "kernel_size", "stride"):
        _int(net[key], f"{w}: network.{key}", 1)
    if _number(net["mean_weight"], f"{w}: network.mean_weight") <= 0:
        raise ProtocolError(f"{w}: network.mean_weight: must be > 0, got {net['mean_weight']}")
    _number(net["c_w"], f"{w}: network.c_w")
    _choice(net["yy_init"], ("constant", "uniform"), f"{w}: network.yy_init")
    _choice(net["yy_pairs"], YY_PAIRS, f"{w}: network.yy_pairs")
    try:
        Geometry(ds["crop"], net["kernel_size"], net["stride"], net["n_filters"], net["architecture"])
    except GeometryError as err:
        raise ProtocolError(f"{w}: network: {err}") from None

    for role, ref in out["models"].items():
        if not isinstance(ref, str):
            raise ProtocolError(f"{w}: models.{role}: expected a model file name or path")

    sim = out["simulation"]
    _choice(sim["device"], ("cpp_standalone", "runtime", "cuda_standalone"), f"{w}: simulation.device")
    import brian2

    T = _quantity(sim["time_per_sample"], brian2.ms, f"{w}: simulation.time_per_sample")
    dt = _quantity(sim["dt"], brian2.ms, f"{w}: simulation.dt")
    if abs(float(T / dt) - round(float(T / dt))) > 1e-9:
        raise ProtocolError(f"{w}: simulation.time_per_sample: {sim['time_per_sample']} is not a whole number of dt")
    _int(sim["samples_per_chunk"], f"{w}: simulation.samples_per_chunk", 1)
    _choice(sim["float"], ("float64", "float32"), f"{w}: simulation.float")
    _int(sim["threads"], f"{w}: simulation.threads", 0)

    ro = out["readout"]
    _choice(ro["linear"], ("logistic", "sgd", None), f"{w}: readout.linear")
    if not isinstance(ro["top_n"], list):
        raise ProtocolError(f"{w}: readout.top_n: expected a list of integers 1..10")
    for k, n in enumerate(ro["top_n"]):
        if _int(n, f"{w}: readout.top_n[{k}]", 1) > 10:
            raise ProtocolError(f"{w}: readout.top_n[{k}]: must be <= 10, got {n}")
    _int(ro["showcase"], f"{w}: readout.showcase", 0)

    phases = out["phases"]
    if not isinstance(phases, list) or not phases:
        raise ProtocolError(f"{w}: phases: expected a non-empty list of phases")
    resolved, names, calibrated = [], set(), False
    explicit = {p.get("name") for p in phases if isinstance(p, dict) and p.get("name")}
    for k, phase in enumerate(phases):
        pw = f"{w}: phases[{k}]"
        if not isinstance(phase, dict):
            raise ProtocolError(f"{pw}: expected a mapping, got {type(phase).__name__}")
        kind = _choice(phase.get("type"), PHASE_TYPES, f"{pw}.type")
        _check_keys(phase, list(PHASE_KEYS[kind]), w, f"phases[{k}].")
        name = phase.get("name") or next(
            c for c in (kind, *(f"{kind}_{m}" for m in range(k, k + len(phases) + 1))) if c not in names | explicit
        )
        if not isinstance(name, str) or name in names:
            raise ProtocolError(f"{pw}.name: {name!r} is not a unique phase name")
        names.add(name)
        entry = {"type": kind, "name": name}
        if kind in ("train", "calibrate", "test"):
            entry["n"] = _int(phase.get("n"), f"{pw}.n", 1)
            entry["sampling"] = _choice(phase.get("sampling") or DEFAULT_SAMPLING[kind], SAMPLINGS, f"{pw}.sampling")
            if kind != "train":  # e.g. validate on calibration images that the calibrate phase did not see
                entry["split"] = _choice(phase.get("split") or PHASE_SPLIT[kind], SPLITS, f"{pw}.split")
                entry["skip"] = _int(phase.get("skip", 0), f"{pw}.skip", 0)
        else:
            entry["projection"] = _choice(phase.get("projection"), PROJECTIONS, f"{pw}.projection")
        if kind == "train":
            learn = phase.get("learn")
            if learn is not None:
                if isinstance(learn, str):
                    learn = [learn]
                if not isinstance(learn, list):
                    raise ProtocolError(f"{pw}.learn: expected a list of projections (XY, YY)")
                for item in learn:
                    _choice(item, PROJECTIONS, f"{pw}.learn")
            entry["learn"] = learn
            _evaluation(phase, entry, out, pw)
        if kind == "lock":
            entry["value"] = None if phase.get("value") is None else _number(phase["value"], f"{pw}.value")
        if kind == "calibrate":
            calibrated = True
        if kind == "test" and not calibrated:
            raise ProtocolError(f"{pw}: a test phase needs a calibrate phase before it")
        resolved.append(entry)
    out["phases"] = resolved
    return out


def _evaluation(phase: dict, entry: dict, out: dict, pw: str) -> None:
    """A train phase's ``evaluate_every`` and ``evaluate: {calibrate: n, test: n}`` (both or neither)."""
    every, sizes = phase.get("evaluate_every"), phase.get("evaluate")
    if every is None and sizes is None:
        return
    if every is None or sizes is None:
        missing = "evaluate_every" if every is None else "evaluate"
        raise ProtocolError(f"{pw}.{missing}: required with {'evaluate' if every is None else 'evaluate_every'}")
    _int(every, f"{pw}.evaluate_every", 1)
    chunk = out["simulation"]["samples_per_chunk"]
    if every % chunk:  # evaluations happen between chunks: a chunk split in two would draw other random numbers
        raise ProtocolError(f"{pw}.evaluate_every: {every} is not a multiple of simulation.samples_per_chunk ({chunk})")
    if not isinstance(sizes, dict):
        raise ProtocolError(f"{pw}.evaluate: expected a mapping {{calibrate: n, test: n}}, got {sizes!r}")
    for key in sizes:
        if key not in EVALUATE_KEYS:
            raise ProtocolError(f"{pw}.evaluate.{key}: unknown key (allowed: {', '.join(EVALUATE_KEYS)})")
    resolved = {}
    for key, split in EVALUATE_KEYS.items():
        if key not in sizes:
            raise ProtocolError(f"{pw}.evaluate.{key}: missing (the number of {split} images of each evaluation)")
        n = _int(sizes[key], f"{pw}.evaluate.{key}", 1)
        if out["dataset"]["path"] is None and n > MNIST_SPLIT_SIZES[split]:
            have = MNIST_SPLIT_SIZES[split]
            raise ProtocolError(f"{pw}.evaluate.{key}: {n} images, but the {split} split has {have}")
        resolved[key] = n
    entry["evaluate_every"], entry["evaluate"] = every, resolved


def protocols_dir() -> Path:
    """The shipped protocols: the repository's top-level ``protocols/``, installed as ``brian_lcsnn.protocol_files``."""
    return shipped_folder("brian_lcsnn.protocol_files", "protocols")


def resolve_protocol(ref: str | Path) -> Path:
    """The protocol file ``ref`` names: an existing file always wins; otherwise a name without ``.yaml`` (such as
    ``quickstart`` or ``thesis/lc100_k12``) is a protocol shipped with the package, wherever it is installed."""
    path = Path(ref)
    if path.is_file() or path.suffix in (".yaml", ".yml") or path.is_absolute():
        return path
    try:
        shipped = protocols_dir() / f"{path}.yaml"
    except ModelError:
        return path
    return shipped if shipped.is_file() else path


def load_protocol(path: str | Path, overrides: list[str] | tuple = ()) -> Protocol:
    """Read, override and check a protocol file (a path, or the name of a shipped protocol: `resolve_protocol`);
    raises `ProtocolError` with a one-line message."""
    path = resolve_protocol(path)
    if not path.is_file():
        hint = "" if path.suffix else " (nor the name of a shipped protocol, such as quickstart or thesis/lc100_k12)"
        raise ProtocolError(f"{path}: protocol file not found{hint}")
    raw = read_yaml(path, ProtocolError)
    if not isinstance(raw, dict):
        raise ProtocolError(f"{path}: a protocol must be a mapping of sections")
    raw = apply_overrides(raw, list(overrides), str(path))
    protocol = Protocol(path=path.resolve(), data=validate(raw, path))
    dataset = protocol.data["dataset"]
    if dataset["path"] is not None:  # relative to the protocol's folder, not the working directory; stored absolute
        folder = Path(dataset["path"]).expanduser()
        dataset["path"] = str(folder if folder.is_absolute() else (protocol.path.parent / folder).resolve())
    try:
        models = protocol.model_files()  # every model file exists, parses, and takes the overrides
    except ModelError as err:
        raise ProtocolError(str(err)) from None
    shared = protocol.data["network"]["architecture"] == "C"
    for role in ("xy", "normalisation"):
        if shared != ("kernel_equations" in models[role].sections):
            need = "a shared-kernel" if shared else "a per-synapse"
            hint = "stdp_postpre_shared / normalise_kernel" if shared else "stdp_postpre / normalise_incoming"
            raise ProtocolError(f"{path}: models.{role}: a {protocol.data['network']['architecture']} network needs "
                                f"{need} model ({hint}), got {models[role].path.name}")  # fmt: skip
    _resolve_learning(protocol.data["phases"], {"XY": models["xy"], "YY": models["yy"]}, path)
    return protocol


def phase_split(phase: dict) -> tuple[str, int]:
    """The data split a phase draws its samples from, and how many images at its start it leaves out."""
    return phase.get("split") or PHASE_SPLIT[phase["type"]], phase.get("skip", 0)


def is_plastic(model) -> bool:
    """A projection can learn when its model has the ``plastic`` gate."""
    return re.search(r"^\s*plastic\s*:", model.section("equations") or "", re.MULTILINE) is not None


def _resolve_learning(phases: list, models: dict, path) -> None:
    """Fill in each train phase's ``learn`` (default: every plastic projection not locked) and check it."""
    locked = set()
    for k, phase in enumerate(phases):
        pw = f"{path}: phases[{k}]"
        if phase["type"] == "lock":
            locked.add(phase["projection"])
        elif phase["type"] == "unlock":
            locked.discard(phase["projection"])
        elif phase["type"] == "train":
            if phase["learn"] is None:
                phase["learn"] = [p for p in PROJECTIONS if is_plastic(models[p]) and p not in locked]
            for proj in phase["learn"]:
                if proj in locked:
                    raise ProtocolError(f"{pw}.learn: {proj} is locked by an earlier phase (unlock it first)")
                if not is_plastic(models[proj]):
                    raise ProtocolError(
                        f"{pw}.learn: {proj} cannot learn: its model {models[proj].path.name} has no 'plastic' gate"
                    )
