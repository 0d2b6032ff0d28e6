"""Tests of brian_lcsnn.protocol: defaults, overrides, and one-line errors naming the file and the key.

Fixture protocols (as NESTML's tests): every file in ``tests/protocols/valid/*.yaml`` must load, every file in
``tests/protocols/invalid/*.yaml`` must be rejected with a `ProtocolError` whose message contains the fragment given
in the file's first line, ``# expect: <fragment>``. Model files used by the valid fixtures live in
``tests/protocols/valid/models/`` (not loaded as protocols: only the top level of ``valid/`` is).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml
from brian2 import Hz, get_dimensions, ms, mV

from brian_lcsnn.models import parse_quantity
from brian_lcsnn.protocol import (
    DEFAULTS,
    Protocol,
    ProtocolError,
    apply_overrides,
    load_protocol,
    validate,
)
from brian_lcsnn.topology import Geometry

pytestmark = pytest.mark.codegen_independent

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "protocols" / "quickstart.yaml"
SHIPPED = sorted({*ROOT.joinpath("protocols").rglob("*.yaml"), *ROOT.joinpath("protocols").rglob("*.yml")})
FIXTURES = Path(__file__).resolve().parent / "protocols"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))

MINIMAL = {"phases": [{"type": "train", "n": 10}]}


def same_quantity(value, expected) -> bool:
    return get_dimensions(value) == get_dimensions(expected) and float(value / expected) == pytest.approx(1.0)


def expected_fragment(path: Path) -> str:
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: <fragment>'"
    fragment = first.removeprefix("# expect: ").strip()
    assert fragment, f"{path.name}: empty expected fragment"
    return fragment


def rejected(path: Path, overrides=()) -> str:
    """The one-line message of the ProtocolError that loading `path` raises."""
    with pytest.raises(ProtocolError) as info:
        load_protocol(path, overrides)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert str(path) in message, f"the file is not named: {message!r}"
    return message


def write(tmp_path: Path, data, name="p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------- the shipped protocols


def test_shipped_protocols_are_found():
    assert QUICKSTART in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT / "protocols")) for p in SHIPPED])
def test_every_shipped_protocol_validates(path):
    protocol = load_protocol(path)
    assert protocol.path == path.resolve()
    assert isinstance(protocol.geometry, Geometry)
    assert [phase["type"] for phase in protocol["phases"]]
    assert len(protocol.model_files()) == 5


def test_quickstart():
    p = load_protocol(QUICKSTART)
    assert isinstance(p, Protocol)
    assert p.name == "quickstart" and p["name"] == "quickstart"
    assert p["seed"] == 1
    assert p.geometry == Geometry(crop=20, kernel_size=12, stride=4, n_filters=25, architecture="LC")
    assert p.geometry.sizes()["total_parameters"] == 37_800
    assert p["network"]["mean_weight"] == 0.46 and p["network"]["c_w"] == -100
    assert p["dataset"] == {"name": "mnist", "path": None, "crop": 20, "intensity": "127.5 Hz"}
    assert p["phases"] == [
        {"type": "train", "name": "train", "n": 2000, "sampling": "with_replacement", "learn": ["XY"]},
        {"type": "calibrate", "name": "calibrate", "n": 5000, "sampling": "ordered", "split": "calibration", "skip": 0},
        {"type": "test", "name": "test", "n": 5000, "sampling": "ordered", "split": "test", "skip": 0},
    ]
    # defaults filled in
    assert p["simulation"] == {
        "device": "cpp_standalone",
        "time_per_sample": "250 ms",
        "dt": "1 ms",
        "samples_per_chunk": 1000,
        "float": "float64",
        "threads": 1,
    }
    assert p["readout"] == {"linear": "logistic", "top_n": [], "showcase": 3}
    assert p["parameters"] == {"input": {}, "neuron": {"refractory_steps": 2}, "xy": {}, "normalisation": {}, "yy": {}}
    assert set(p.data) == set(DEFAULTS)


def test_quickstart_model_files():
    files = load_protocol(QUICKSTART).model_files()
    assert set(files) == {"input", "neuron", "xy", "normalisation", "yy"}
    assert {role: m.name for role, m in files.items()} == {
        "input": "input_thesis",
        "neuron": "adaptive_lif",
        "xy": "stdp_postpre",
        "normalisation": "normalise_incoming",
        "yy": "competition_fixed",
    }
    assert {role: m.kind for role, m in files.items()} == {
        "input": "input",
        "neuron": "neuron",
        "xy": "synapse",
        "normalisation": "normalisation",
        "yy": "synapse",
    }
    assert files["neuron"].parameters["refractory_steps"] == 2
    assert same_quantity(files["neuron"].parameters["tau_m"], 20 * ms)


# ---------------------------------------------------------------- defaults


def test_minimal_protocol_gets_every_default(tmp_path):
    path = write(tmp_path, MINIMAL, "tiny-run.yaml")
    p = load_protocol(path)
    assert p.name == "tiny-run"  # the file stem
    assert p["description"] == "" and p["seed"] == 1
    assert p["simulation"]["dt"] == "1 ms"
    assert p["simulation"]["time_per_sample"] == "250 ms"
    assert p["dataset"]["intensity"] == "127.5 Hz" and p["dataset"]["crop"] == 20
    for section, default in DEFAULTS.items():
        if isinstance(default, dict):
            assert p[section] == default, section
    assert p.geometry == Geometry(20, 12, 4, 25)
    assert p["phases"] == [{"type": "train", "name": "train", "n": 10, "sampling": "with_replacement", "learn": ["XY"]}]


def test_defaults_are_not_shared_between_protocols(tmp_path):
    before = copy.deepcopy(DEFAULTS)
    first = load_protocol(write(tmp_path, MINIMAL, "a.yaml"))
    first.data["parameters"]["neuron"]["tau_m"] = "1 ms"
    first.data["readout"]["top_n"].append(3)
    second = load_protocol(write(tmp_path, MINIMAL, "b.yaml"))
    assert second["parameters"]["neuron"] == {} and second["readout"]["top_n"] == []
    assert DEFAULTS == before


def test_partial_section_is_merged_with_defaults(tmp_path):
    data = {"simulation": {"dt": "0.5 ms"}, "network": {"n_filters": 100, "kernel_size": 8}} | MINIMAL
    p = load_protocol(write(tmp_path, data))
    assert p["simulation"]["dt"] == "0.5 ms"
    assert p["simulation"]["time_per_sample"] == "250 ms"
    assert p["simulation"]["device"] == "cpp_standalone"
    assert p["network"] == {
        "architecture": "LC",
        "n_filters": 100,
        "kernel_size": 8,
        "stride": 4,
        "mean_weight": 0.4,
        "c_w": -100.0,
        "yy_init": "constant",
        "yy_pairs": "competition",
    }
    assert p.geometry.n_neurons == 1600


def test_default_sampling_and_names(tmp_path):
    phases = [{"type": t, "n": 3} for t in ("train", "calibrate", "test", "train", "test")]
    p = load_protocol(write(tmp_path, {"phases": phases}))
    assert [ph["sampling"] for ph in p["phases"]] == [
        "with_replacement",
        "ordered",
        "ordered",
        "with_replacement",
        "ordered",
    ]
    assert [ph["name"] for ph in p["phases"]] == ["train", "calibrate", "test", "train_3", "test_4"]


def test_explicit_phase_name_and_sampling_are_kept(tmp_path):
    phases = [
        {"type": "train", "n": 3, "name": "warmup", "sampling": "shuffled"},
        {"type": "calibrate", "n": 2, "sampling": "with_replacement"},
    ]
    p = load_protocol(write(tmp_path, {"phases": phases}))
    assert p["phases"] == [
        {"type": "train", "name": "warmup", "n": 3, "sampling": "shuffled", "learn": ["XY"]},
        {
            "type": "calibrate",
            "name": "calibrate",
            "n": 2,
            "sampling": "with_replacement",
            "split": "calibration",
            "skip": 0,
        },
    ]


def test_validate_does_not_modify_its_input(tmp_path):
    raw = {"network": {"n_filters": 100}, "phases": [{"type": "train", "n": 1}]}
    before = copy.deepcopy(raw)
    out = validate(raw, tmp_path / "x.yaml")
    assert raw == before
    assert out["phases"][0]["name"] == "train" and out["network"]["kernel_size"] == 12


# ---------------------------------------------------------------- overrides


def test_apply_overrides_values_are_yaml():
    raw = yaml.safe_load(QUICKSTART.read_text())
    before = copy.deepcopy(raw)
    out = apply_overrides(
        raw,
        [
            "network.n_filters=100",
            "phases.0.n=500",
            "simulation.dt=0.5 ms",
            "readout.top_n=[1, 3]",
            "readout.linear=null",
            "description = spaced ",
        ],
        "q.yaml",
    )
    assert raw == before  # a copy is changed, not the input
    assert out["network"]["n_filters"] == 100 and isinstance(out["network"]["n_filters"], int)
    assert out["phases"][0] == {"type": "train", "n": 500}
    assert out["phases"][1] == {"type": "calibrate", "n": 5000}
    assert out["simulation"]["dt"] == "0.5 ms"
    assert out["readout"] == {"top_n": [1, 3], "linear": None}
    assert out["description"] == "spaced"
    assert apply_overrides(raw, [], "q.yaml") == raw


def test_apply_overrides_creates_missing_mappings():
    out = apply_overrides({"phases": []}, ["parameters.neuron.tau_m=10 ms", "a=b=c"], "q.yaml")
    assert out["parameters"] == {"neuron": {"tau_m": "10 ms"}}
    assert out["a"] == "b=c"


def test_nested_new_key_is_rejected_by_validation(tmp_path):
    raw = apply_overrides(copy.deepcopy(MINIMAL), ["network.foo.bar=1"], "q.yaml")
    assert raw["network"] == {"foo": {"bar": 1}}
    with pytest.raises(ProtocolError, match=r"network\.foo: unknown key"):
        validate(raw, tmp_path / "q.yaml")
    message = rejected(write(tmp_path, MINIMAL), ["network.foo.bar=1"])
    assert "network.foo: unknown key" in message


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("phases.3.n=1", "q.yaml: --set phases.3.n: phases.3 is not an index of the list"),
        ("phases.x.n=1", "q.yaml: --set phases.x.n: phases.x is not an index of the list"),
        ("phases.-1.n=1", "phases.-1 is not an index of the list"),
        ("phases.0.n.k=1", "q.yaml: --set phases.0.n.k: phases.0.n is not a mapping"),
        ("seed.value=3", "--set seed.value: seed is not a mapping"),
        ("network.n_filters", "q.yaml: --set 'network.n_filters': expected dotted.key=value"),
    ],
)
def test_apply_overrides_errors(override, fragment):
    raw = {"seed": 1, "phases": [{"type": "train", "n": 1}]}
    with pytest.raises(ProtocolError) as info:
        apply_overrides(raw, [override], "q.yaml")
    assert fragment in str(info.value)


def test_load_protocol_with_overrides():
    p = load_protocol(
        QUICKSTART,
        ["network.n_filters=100", "phases.0.n=500", "parameters.neuron.tau_m=10 ms", "simulation.device=runtime"],
    )
    assert p.geometry == Geometry(20, 12, 4, 100)
    assert p["phases"][0]["n"] == 500
    assert p["simulation"]["device"] == "runtime"
    neuron = p.model_files()["neuron"]
    assert same_quantity(neuron.parameters["tau_m"], 10 * ms)
    assert neuron.parameters["refractory_steps"] == 2
    # the file itself is unchanged
    assert load_protocol(QUICKSTART)["network"]["n_filters"] == 25


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("network.n_filters=ten", "network.n_filters: expected an integer, got 'ten'"),
        ("network.kernel_size=24", "network: kernel_size 24 is larger than the crop 20"),
        ("phases.2.type=calibrate", None),  # valid: a second calibrate phase
        ("parameters.neuron.tau_m=10 mV", "parameters.neuron.tau_m: '10 mV' has the wrong unit"),
        ("models.neuron=stdp_postpre", "models.neuron: stdp_postpre.yaml is a 'synapse' model"),
        ("phases.1.n=1.5", "phases[1].n: expected an integer, got 1.5"),
        ("phases.9.n=1", "--set phases.9.n: phases.9 is not an index of the list"),
    ],
)
def test_overrides_are_validated(override, fragment):
    if fragment is None:
        assert load_protocol(QUICKSTART, [override])["phases"][2]["name"] == "calibrate_2"
        return
    assert fragment in rejected(QUICKSTART, [override])


# ---------------------------------------------------------------- errors


def test_missing_protocol_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert rejected(missing) == f"{missing}: protocol file not found"


def test_protocol_values_are_checked_after_the_yaml(tmp_path):
    """Same errors from Python data as from files (validate), with the path in the message."""
    with pytest.raises(ProtocolError, match=r"^/some/where\.yaml: network\.stride: must be >= 1, got 0$"):
        validate({"network": {"stride": 0}} | MINIMAL, Path("/some/where.yaml"))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            {"simulation": {"time_per_sample": "250 ms", "dt": "0.3 ms"}},
            "simulation.time_per_sample: 250 ms is not a whole number of dt",
        ),
        ({"simulation": {"time_per_sample": "-250 ms"}}, "simulation.time_per_sample: expected a positive quantity"),
        ({"simulation": {"threads": -1}}, "simulation.threads: must be >= 0, got -1"),
        ({"dataset": {"intensity": "0 Hz"}}, "dataset.intensity: expected a positive quantity in units of"),
        ({"dataset": {"intensity": "1 kHz/ms"}}, "dataset.intensity: expected a positive quantity"),
        ({"readout": {"top_n": [0]}}, "readout.top_n[0]: must be >= 1, got 0"),
        ({"readout": {"top_n": [3, "5"]}}, "readout.top_n[1]: expected an integer, got '5'"),
        ({"dataset": {"path": 5}}, "dataset.path: expected a folder path"),
        ({"dataset": {"name": None}}, "dataset.name: expected a string"),
        ({"description": ["a"]}, "description: expected a string"),
        ({"network": {"mean_weight": "0.4"}}, "network.mean_weight: expected a number, got '0.4'"),
        ({"parameters": {"yy": {"w_psp": "1 ms"}}}, "parameters.yy.w_psp: '1 ms' has the wrong unit"),
        (
            {"parameters": {"normalisation": {"gain": 2}}},
            "parameters.normalisation.gain: normalise_incoming.yaml has no parameter",
        ),
    ],
)
def test_more_invalid_values(tmp_path, change, fragment):
    assert fragment in rejected(write(tmp_path, MINIMAL | change))


def test_valid_edge_values(tmp_path):
    data = MINIMAL | {
        "simulation": {"time_per_sample": "250 ms", "dt": "0.1 ms", "threads": 0},
        "dataset": {"intensity": "0.1 kHz"},
        "readout": {"top_n": [10, 1], "linear": None},
    }
    p = load_protocol(write(tmp_path, data))
    assert p["readout"]["top_n"] == [10, 1]
    assert same_quantity(parse_quantity(p["dataset"]["intensity"]), 100 * Hz)


def test_error_in_a_model_file_is_a_protocol_error(tmp_path):
    (tmp_path / "broken.yaml").write_text("kind: neuron\nequations: 'dv/dt = -v/(10*ms) : volt'\n")
    path = write(tmp_path, {"models": {"neuron": "broken.yaml"}} | MINIMAL)
    with pytest.raises(ProtocolError, match="section 'threshold' is missing or empty") as info:
        load_protocol(path)
    assert "broken.yaml" in str(info.value)


def test_relative_model_path_is_next_to_the_protocol(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the protocol's folder
    path = FIXTURES / "valid" / "relative_model.yaml"
    neuron = load_protocol(path).model_files()["neuron"]
    assert neuron.path == (FIXTURES / "valid" / "models" / "fixture_neuron.yaml").resolve()
    assert same_quantity(neuron.parameters["tau_m"], 10 * ms)
    assert same_quantity(neuron.parameters["v_rest"], -65 * mV)


# ---------------------------------------------------------------- fixture protocols


def test_fixture_folders_are_populated():
    assert len(VALID) >= 5
    assert len(INVALID) >= 40


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_fixture_loads(path):
    protocol = load_protocol(path)
    assert protocol.path == path.resolve()
    assert len(protocol.model_files()) == 5
    assert protocol.geometry.n_neurons >= 1


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_fixture_is_rejected(path):
    fragment = expected_fragment(path)
    message = rejected(path)
    assert fragment in message, f"{fragment!r} not in {message!r}"


def test_full_explicit_fixture_keeps_every_value():
    p = load_protocol(FIXTURES / "valid" / "full_explicit.yaml")
    assert p.name == "full-explicit"
    assert p["seed"] == 0
    assert p.geometry == Geometry(20, 8, 4, 100)
    assert p["simulation"] == {
        "device": "runtime",
        "time_per_sample": "100 ms",
        "dt": "0.5 ms",
        "samples_per_chunk": 50,
        "float": "float32",
        "threads": 0,
    }
    assert [ph["name"] for ph in p["phases"]] == ["warmup", "train", "calibrate", "test"]
    assert [ph["sampling"] for ph in p["phases"]] == ["shuffled", "ordered", "with_replacement", "ordered"]
    files = p.model_files()
    assert files["input"].name == "input_poisson"
    assert same_quantity(files["input"].parameters["tau_src"], 15 * ms)
    assert same_quantity(files["neuron"].parameters["v_thresh"], -50 * mV)
    assert files["neuron"].parameters["refractory_steps"] == 5
    assert files["xy"].parameters["nu_dep"] == pytest.approx(2e-4)
    assert same_quantity(files["yy"].parameters["w_psp"], 0.5 * mV)


def test_learning_curve_keys_are_resolved():
    p = load_protocol(FIXTURES / "valid" / "learning_curve_tiny.yaml")
    train = p["phases"][0]
    assert train["evaluate_every"] == 100 and train["evaluate"] == {"calibrate": 100, "test": 100}
    assert "evaluate_every" not in p["phases"][1] and "evaluate" not in p["phases"][2]
    assert p["readout"]["showcase"] == 2


def test_evaluation_sizes_of_an_own_dataset_are_checked_when_it_is_loaded(tmp_path):
    # MNIST's split sizes are known when the protocol is read; a folder's only once its data is loaded
    from brian_lcsnn.runner import _check_split_sizes

    class Dataset:
        name = "own"

        def __init__(self, size):
            self.size = size

        def split(self, name):
            return np.zeros((self.size, 28, 28)), np.zeros(self.size)

    phase = {"type": "train", "n": 10, "evaluate_every": 5, "evaluate": {"calibrate": 10, "test": 20000}}
    data = {"dataset": {"name": "own", "path": str(tmp_path)}, "simulation": {"samples_per_chunk": 5},
            "phases": [phase]}  # fmt: skip
    protocol = load_protocol(write(tmp_path, data))
    assert protocol["phases"][0]["evaluate"]["test"] == 20000
    _check_split_sizes(protocol, Dataset(20000))
    with pytest.raises(ProtocolError, match=r"phases\[0\]\.evaluate\.test: 20000 images, but the test split of own"):
        _check_split_sizes(protocol, Dataset(19999))


# ---------------------------------------------------------------- regressions: bugs found by these tests, now fixed


def test_unknown_top_level_key_message_separates_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL | {"foo": 1})
    assert f"{path}: foo: unknown key" in rejected(path)


def test_control_character_gives_a_one_line_error(tmp_path):
    path = write(tmp_path, "phases:\n  - {type: train, n: 1}\nname: a\x01b\n")
    rejected(path)


def test_non_utf8_file_is_a_protocol_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\nphases:\n  - {type: train, n: 1}\n".encode("latin-1"))
    rejected(path)


def test_non_unit_name_in_a_quantity_is_a_protocol_error(tmp_path):
    rejected(write(tmp_path, MINIMAL | {"dataset": {"intensity": "1 exp"}}))


@pytest.mark.parametrize("value", [0, [], ""])
def test_falsy_section_is_rejected(tmp_path, value):
    assert "network: expected a mapping" in rejected(write(tmp_path, MINIMAL | {"network": value}))


def test_nan_mean_weight_is_rejected(tmp_path):
    rejected(write(tmp_path, "network: {mean_weight: .nan}\nphases:\n  - {type: train, n: 1}\n"))


def test_default_phase_name_avoids_explicit_names(tmp_path):
    phases = [{"type": "train", "n": 1}, {"type": "calibrate", "n": 1, "name": "train_2"}, {"type": "train", "n": 1}]
    p = load_protocol(write(tmp_path, {"phases": phases}))
    names = [ph["name"] for ph in p["phases"]]
    assert len(set(names)) == 3


def test_validation_split_phases(tmp_path):
    """A test phase can score calibration images the calibrate phase left out (tuning without the test set)."""
    import numpy as np

    from brian_lcsnn.protocol import phase_split
    from brian_lcsnn.runner import _check_split_sizes, _phase_images

    path = tmp_path / "validate.yaml"
    path.write_text(
        "phases:\n  - {type: train, n: 10}\n  - {type: calibrate, n: 6}\n"
        "  - {type: test, name: validation, n: 4, split: calibration, skip: 6}\n"
    )
    p = load_protocol(path)
    validation = p["phases"][2]
    assert phase_split(validation) == ("calibration", 6)
    assert phase_split(p["phases"][1]) == ("calibration", 0)

    class Tiny:
        name = "tiny"

        def split(self, which):
            n = {"train": 20, "calibration": 10, "test": 5}[which]
            return np.broadcast_to(np.arange(n)[:, None, None], (n, 28, 28)), np.arange(n) % 10  # images fit the crop

    images, labels = _phase_images(Tiny(), validation)
    assert images[:, 0, 0].tolist() == [6, 7, 8, 9] and labels.tolist() == [6, 7, 8, 9]
    _check_split_sizes(p, Tiny())  # 6 + 4 calibration images: fits exactly
    too_many = load_protocol(path, ["phases.2.n=5"])
    with pytest.raises(
        ProtocolError, match=r"phases\[2\]: 5 ordered images from the calibration split of tiny after skipping 6"
    ):
        _check_split_sizes(too_many, Tiny())
