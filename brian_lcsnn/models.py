"""Model files: Brian2 equation strings and their parameters, read from YAML files under ``models/``.

A model file holds one piece of the network's dynamics (an input layer, a neuron, a plasticity rule, a
normalisation, ...) so that a researcher can change the dynamics without touching Python. Parameters carry
their units as strings (``"20 ms"``) and become Brian2 quantities; protocols may override them by name.
A parameter that the equations also declare as a variable is a runtime parameter: set per run, not compiled.
"""

from __future__ import annotations

import importlib.resources
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .errors import LcsnnError

__all__ = [
    "ModelError",
    "ModelFile",
    "MODEL_KINDS",
    "load_model",
    "parse_quantity",
    "models_dir",
    "read_yaml",
    "load_yaml",
]

logger = logging.getLogger(__name__)

#: The sections each kind of model file may have (besides ``kind`` and ``parameters``), and which are required.
MODEL_KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "input": {"required": ("equations", "threshold"), "optional": ("step", "reset", "sample_start")},
    "neuron": {"required": ("equations", "threshold"), "optional": ("step", "reset", "sample_start")},
    "synapse": {
        "required": ("equations", "on_pre"),
        "optional": ("on_post", "first_step_end", "step_end", "transmit", "kernel_equations", "kernel_step_end"),
    },
    "normalisation": {
        "required": ("target_equations", "synapse_equations", "sample_end"),
        "optional": ("target_sample_end", "kernel_equations"),
    },
}

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The sections that declare variables (Brian2 ``Equations``), where a parameter can become a runtime one.
EQUATION_SECTIONS = ("equations", "target_equations", "synapse_equations", "kernel_equations")
_DECLARED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:", re.MULTILINE)  # "name : unit (flags)"


class ModelError(LcsnnError, ValueError):
    """A model file that cannot be used; the message names the file and the key."""


def shipped_folder(package: str, folder: str) -> Path:
    """A folder of YAML files installed with the package: the repository's top-level ``folder`` (``models`` or
    ``protocols``), installed as the subpackage ``package`` (an editable install maps it to the checkout's folder,
    so an edit there is seen at once); a checkout run without installing reads the folder next to the package."""
    try:
        return Path(importlib.resources.files(package))
    except ModuleNotFoundError:
        here = Path(__file__).resolve().parent
        if (here.parent / folder / "__init__.py").is_file():
            return here.parent / folder
        raise ModelError(f"{package}: the package's {folder} folder is missing (reinstall brian-lcsnn)") from None


def models_dir() -> Path:
    """The shipped model files: the repository's top-level ``models/``, installed as ``brian_lcsnn.model_files``."""
    return shipped_folder("brian_lcsnn.model_files", "models")


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_FACTOR = r"([A-Za-z_][A-Za-z0-9_]*)(?:(?:\^|\*\*)(-?[1-4]))?"  # a unit's name, optionally ^2 .. ^4
_UNIT = r"[A-Za-z_][A-Za-z0-9_]*(?:(?:\^|\*\*)-?[1-4])?"
_QUANTITY = re.compile(rf"({_NUMBER})(?:\s*\*?\s*({_UNIT}(?:\s*[*/]\s*{_UNIT})*))?")


def parse_quantity(value, where: str = "value"):
    """Turn ``-65``, ``"-65 mV"``, ``"1e6 ms"``, ``"5e-1"`` or ``"0.05*mV"`` into a float or a Brian2 quantity.

    A string is a number (read by ``float``), optionally followed by a unit: Brian2 unit names (looked up by
    name, never evaluated) joined by ``*`` or ``/``, each with an optional small power (``mV/ms``,
    ``metre^2``). Anything else (arithmetic, nested powers) is a `ModelError` at once.
    """
    import brian2

    if isinstance(value, bool):
        raise ModelError(f"{where}: expected a number with an optional unit, got {value!r}")
    if isinstance(value, int | float):
        return value
    if not isinstance(value, str):
        raise ModelError(f"{where}: expected a number with an optional unit, got {value!r}")
    text = value.strip()
    match = _QUANTITY.fullmatch(text) if len(text) <= 100 else None
    if not match:
        raise ModelError(f"{where}: cannot read {value!r} as a number with a unit (e.g. '20 ms')")
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        return number
    result = brian2.Quantity(1.0)
    for op, name, power in re.findall(rf"(^|[*/]){_UNIT_FACTOR}", unit.replace(" ", "")):
        factor = getattr(brian2.units, name, None)
        if not isinstance(factor, brian2.Unit):
            raise ModelError(f"{where}: unknown unit {name!r} in {value!r}")
        factor = factor ** int(power) if power else factor
        result = result / factor if op == "/" else result * factor
    return number * result


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``5e-1`` and ``1e6`` as numbers (as YAML 1.2 does; YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def load_yaml(text: str):
    """Parse YAML text as `read_yaml` does (safe; ``5e-1`` is a number)."""
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


def read_yaml(path: Path, error: type[Exception]):
    """Parse a YAML file; any problem becomes one line of ``error`` naming the file (and the line)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise error(f"{path}{line}: not valid YAML ({problem})") from None


@dataclass(frozen=True)
class ModelFile:
    """One model file: its kind, parameters (Brian2 quantities) and code sections (equation strings)."""

    path: Path
    kind: str
    parameters: dict = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem

    def section(self, key: str) -> str | None:
        return self.sections.get(key)

    @property
    def runtime_parameters(self) -> tuple[str, ...]:
        """Parameters that the model's equations also declare (``tau_src : second (shared, constant)``):
        their values are set at the start of every run instead of being compiled into the code, so changing
        one (a sweep over it, a protocol's override) reuses the compiled network."""
        declared = {m for key in EQUATION_SECTIONS for m in _DECLARED.findall(self.sections.get(key) or "")}
        return tuple(name for name in self.parameters if name in declared)

    @property
    def compiled_parameters(self) -> dict:
        """The other parameters: constants of the generated code (the namespace of the model's groups)."""
        runtime = set(self.runtime_parameters)
        return {name: value for name, value in self.parameters.items() if name not in runtime}

    def with_parameters(self, overrides: dict, where: str) -> ModelFile:
        """A copy with some parameters replaced; unknown names and unit mismatches are errors."""
        import brian2

        params = dict(self.parameters)
        for key, value in overrides.items():
            if key not in params:
                known = ", ".join(sorted(params)) or "none"
                raise ModelError(f"{where}.{key}: {self.path.name} has no parameter {key!r} (it has: {known})")
            new = parse_quantity(value, f"{where}.{key}")
            old_dim = brian2.get_dimensions(params[key])
            if brian2.get_dimensions(new) != old_dim:
                raise ModelError(
                    f"{where}.{key}: {value!r} has the wrong unit for {self.path.name}"
                    f" (expected dimensions of {params[key]!r})"
                )
            params[key] = new
        return replace(self, parameters=params)


def load_model(path: str | Path, expected_kind: str | None = None, where: str | None = None) -> ModelFile:
    """Read and check one model file.

    Parameters
    ----------
    path : str or Path
        The YAML file; a bare name such as ``adaptive_lif`` is looked up in the shipped ``models/`` folder.
    expected_kind : str, optional
        Raise `ModelError` unless the file is of this kind.
    where : str, optional
        Where the file was named (e.g. ``"protocol.yaml: models.neuron"``), for error messages.
    """
    path = Path(path)
    if not path.suffix and not path.exists():
        path = models_dir() / f"{path.name}.yaml"
    where = where or str(path)
    if not path.is_file():
        raise ModelError(f"{where}: model file {str(path)!r} not found")
    data = read_yaml(path, ModelError)
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a model file must be a mapping of sections")
    kind = data.get("kind")
    if kind not in MODEL_KINDS:
        raise ModelError(f"{path}: kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    if expected_kind and kind != expected_kind:
        raise ModelError(f"{where}: {path.name} is a {kind!r} model, expected a {expected_kind!r} model")
    allowed = set(MODEL_KINDS[kind]["required"]) | set(MODEL_KINDS[kind]["optional"]) | {"kind", "parameters"}
    for key in data:
        if key not in allowed:
            raise ModelError(
                f"{path}: unknown section {key!r} for a {kind} model (allowed: {', '.join(sorted(allowed))})"
            )
    for key in MODEL_KINDS[kind]["required"]:
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise ModelError(f"{path}: section {key!r} is missing or empty")
    sections = {}
    for key in allowed - {"kind", "parameters"}:
        if key in data:
            if not isinstance(data[key], str):
                raise ModelError(f"{path}: section {key!r} must be a string of Brian2 code")
            sections[key] = data[key].strip()
    raw_params = data.get("parameters") or {}
    if not isinstance(raw_params, dict):
        raise ModelError(f"{path}: parameters must be a mapping name: value")
    params = {}
    for name, value in raw_params.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ModelError(f"{path}: parameters.{name}: not a valid identifier")
        params[name] = parse_quantity(value, f"{path}: parameters.{name}")
    return ModelFile(path=path.resolve(), kind=kind, parameters=params, sections=sections)
