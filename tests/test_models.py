"""Tests of brian_lcsnn.models: the shipped model files, quantities with units, and model-file errors.

Brian2 is imported for its units only; nothing is compiled or run.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from brian2 import Hz, Quantity, get_dimensions, kHz, ms, mV, second, volt

from brian_lcsnn.models import MODEL_KINDS, ModelError, ModelFile, load_model, models_dir, parse_quantity

pytestmark = pytest.mark.codegen_independent

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(MODELS.glob("*.yaml"))

EXPECTED_KINDS = {
    "adaptive_lif": "neuron",
    "competition_fixed": "synapse",
    "input_poisson": "input",
    "input_regular": "input",
    "input_thesis": "input",
    "normalise_incoming": "normalisation",
    "stdp_postpre": "synapse",
}


def same_quantity(value, expected) -> bool:
    """Same dimensions and (nearly) the same value; plain numbers compare as dimensionless."""
    if get_dimensions(value) != get_dimensions(expected):
        return False
    return float(value / expected) == pytest.approx(1.0, rel=1e-12) if float(expected) else float(value) == 0


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


NEURON = """
    kind: neuron
    parameters:
      tau: 10 ms
      v0: -70 mV
      n_steps: 3
    equations: |
      dv/dt = (v0 - v) / tau : volt
    threshold: v > -50*mV
    reset: |
      v = v0
"""


# ---------------------------------------------------------------- shipped model files


def test_models_dir_is_the_repository_folder():
    assert models_dir().resolve() == MODELS
    assert len(SHIPPED) >= len(EXPECTED_KINDS)
    assert {p.stem for p in SHIPPED} >= set(EXPECTED_KINDS)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_model_loads(path):
    model = load_model(path)
    assert isinstance(model, ModelFile)
    assert model.kind in MODEL_KINDS
    assert model.path == path.resolve()
    assert model.name == path.stem
    if path.stem in EXPECTED_KINDS:
        assert model.kind == EXPECTED_KINDS[path.stem]
    spec = MODEL_KINDS[model.kind]
    for key in spec["required"]:
        assert isinstance(model.section(key), str) and model.section(key)
        assert model.section(key) == model.section(key).strip()
    assert set(model.sections) <= set(spec["required"]) | set(spec["optional"])
    for name, value in model.parameters.items():
        assert isinstance(value, int | float | Quantity), name
    # loading by bare name finds the same file
    assert load_model(path.stem) == model


def test_adaptive_lif_parameters():
    model = load_model("adaptive_lif", expected_kind="neuron")
    params = model.parameters
    assert set(params) == {
        "v_rest",
        "v_reset",
        "v_thresh",
        "tau_m",
        "theta_plus",
        "tau_theta",
        "refractory_steps",
        "tau_tgt",
        "tau_src",
    }
    assert same_quantity(params["v_rest"], -65 * mV)
    assert same_quantity(params["v_reset"], -65 * mV)
    assert same_quantity(params["v_thresh"], -52 * mV)
    assert same_quantity(params["tau_m"], 20 * ms)
    assert same_quantity(params["theta_plus"], 0.05 * mV)
    assert same_quantity(params["tau_theta"], 1e6 * ms)
    assert same_quantity(params["tau_theta"], 1000 * second)
    assert same_quantity(params["tau_tgt"], 20 * ms)
    assert params["refractory_steps"] == 2 and isinstance(params["refractory_steps"], int)
    assert model.section("threshold") == "v >= v_thresh + theta"
    assert set(model.sections) >= {"equations", "step", "threshold", "reset", "sample_start"}
    assert "dv/dt = (v_rest - v) / tau_m : volt" in model.section("equations")


def test_stdp_postpre_parameters():
    model = load_model("stdp_postpre", expected_kind="synapse")
    params = model.parameters
    # "1e-4" is a string for PyYAML (no dot), so parse_quantity must turn it into a float
    assert params["nu_dep"] == pytest.approx(1e-4) and isinstance(params["nu_dep"], float)
    assert params["nu_pot"] == pytest.approx(1e-2) and isinstance(params["nu_pot"], float)
    assert params["wmax"] == 1
    assert same_quantity(params["w_psp"], 1 * mV)
    assert set(model.sections) >= {"equations", "on_pre", "on_post"}


@pytest.mark.parametrize("name", ["input_thesis", "input_poisson", "input_regular"])
def test_input_models(name):
    model = load_model(name, expected_kind="input")
    assert same_quantity(model.parameters["tau_src"], 20 * ms)
    assert "stimulus(t, i)" in model.section("equations")


def test_competition_and_normalisation():
    yy = load_model("competition_fixed", expected_kind="synapse")
    assert same_quantity(yy.parameters["w_psp"], 1 * mV)
    assert yy.section("on_post") is None
    norm = load_model("normalise_incoming", expected_kind="normalisation")
    assert norm.parameters == {}
    assert set(norm.sections) == {"target_equations", "synapse_equations", "target_sample_end", "sample_end"}


def test_expected_kind_mismatch_names_where():
    with pytest.raises(ModelError) as info:
        load_model("stdp_postpre", expected_kind="neuron", where="p.yaml: models.neuron")
    message = str(info.value)
    assert message.startswith("p.yaml: models.neuron: ")
    assert "stdp_postpre.yaml is a 'synapse' model, expected a 'neuron' model" in message


# ---------------------------------------------------------------- parse_quantity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20 ms", 20 * ms),
        ("-65 mV", -65 * mV),
        ("1e6 ms", 1e6 * ms),
        ("0.05*mV", 0.05 * mV),
        ("0.05 * mV", 0.05 * mV),
        ("-65mV", -65 * mV),
        ("127.5 Hz", 127.5 * Hz),
        ("5 kHz", 5 * kHz),
        (" 2.5e-3 second ", 2.5 * ms),
        (".5 mV", 0.5 * mV),
        ("+3 ms", 3 * ms),
        ("1 mV/ms", 1 * volt / second),
        ("2 ms^2", 2 * ms**2),
    ],
)
def test_parse_quantity_with_units(text, expected):
    value = parse_quantity(text)
    assert isinstance(value, Quantity)
    assert same_quantity(value, expected)


@pytest.mark.parametrize(("value", "expected"), [(3, 3), (-1.5, -1.5), ("3", 3.0), ("1e-4", 1e-4), ("-2.", -2.0)])
def test_parse_quantity_plain_numbers(value, expected):
    result = parse_quantity(value)
    assert result == expected
    assert type(result) is type(expected)
    assert get_dimensions(result).is_dimensionless


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("abc", "cannot read 'abc' as a number with a unit"),
        ("", "cannot read"),
        ("ms", "cannot read"),
        ("12 parsecs", "unknown unit 'parsecs'"),
        ("1 ms ms", "cannot read '1 ms ms'"),  # a unit, not a list of them
        ("1 Hz^9^9^9", "cannot read '1 Hz^9^9^9'"),  # never evaluated: this hung `lcsnn check`
        ("1 (ms+ms)", "cannot read"),
        ("1 Hz**99", "cannot read"),
        ("2 sin", "unknown unit 'sin'"),  # a name of brian2.units that is not a unit
        ("1 e6", "unknown unit 'e6'"),
        (True, "expected a number with an optional unit, got True"),
        (False, "expected a number with an optional unit"),
        (None, "expected a number with an optional unit"),
        ([20, "ms"], "expected a number with an optional unit"),
    ],
)
def test_parse_quantity_errors(value, fragment):
    with pytest.raises(ModelError) as info:
        parse_quantity(value, where="f.yaml: parameters.tau")
    message = str(info.value)
    assert message.startswith("f.yaml: parameters.tau: ")
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize("text", ["1 exp", "1 Unit", "2 allunits"])
def test_parse_quantity_non_unit_names_are_model_errors(text):
    with pytest.raises(ModelError, match="unknown unit"):
        parse_quantity(text)


# ---------------------------------------------------------------- with_parameters


def test_with_parameters_overrides(tmp_path):
    model = load_model(write(tmp_path / "lif.yaml", NEURON))
    changed = model.with_parameters({"tau": "5 ms", "v0": "-60 mV", "n_steps": 4}, "p.yaml: parameters.neuron")
    assert same_quantity(changed.parameters["tau"], 5 * ms)
    assert same_quantity(changed.parameters["v0"], -60 * mV)
    assert changed.parameters["n_steps"] == 4
    # the original is untouched, the rest of the file is shared
    assert same_quantity(model.parameters["tau"], 10 * ms)
    assert model.parameters["n_steps"] == 3
    assert changed.sections == model.sections and changed.kind == "neuron" and changed.path == model.path
    assert model.with_parameters({}, "x") == model


def test_with_parameters_on_a_shipped_model():
    model = load_model("adaptive_lif").with_parameters({"tau_m": "10 ms", "refractory_steps": 5}, "w")
    assert same_quantity(model.parameters["tau_m"], 10 * ms)
    assert model.parameters["refractory_steps"] == 5
    assert same_quantity(model.parameters["v_rest"], -65 * mV)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"tau": "5 mV"}, "p.yaml: parameters.neuron.tau: '5 mV' has the wrong unit for lif.yaml"),
        ({"tau": 5}, "p.yaml: parameters.neuron.tau: 5 has the wrong unit for lif.yaml"),
        ({"n_steps": "3 ms"}, "p.yaml: parameters.neuron.n_steps: '3 ms' has the wrong unit"),
        ({"v0": "-60 mV/ms"}, "parameters.neuron.v0: '-60 mV/ms' has the wrong unit"),
    ],
)
def test_with_parameters_unit_mismatch(tmp_path, overrides, fragment):
    model = load_model(write(tmp_path / "lif.yaml", NEURON))
    with pytest.raises(ModelError) as info:
        model.with_parameters(overrides, "p.yaml: parameters.neuron")
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_with_parameters_unknown_name(tmp_path):
    model = load_model(write(tmp_path / "lif.yaml", NEURON))
    with pytest.raises(ModelError) as info:
        model.with_parameters({"tau_m": "5 ms"}, "p.yaml: parameters.neuron")
    message = str(info.value)
    assert message.startswith("p.yaml: parameters.neuron.tau_m: lif.yaml has no parameter 'tau_m'")
    assert "(it has: n_steps, tau, v0)" in message


def test_with_parameters_bad_value(tmp_path):
    model = load_model(write(tmp_path / "lif.yaml", NEURON))
    with pytest.raises(ModelError, match=r"^w\.tau: cannot read 'soon'"):
        model.with_parameters({"tau": "soon"}, "w")


def test_with_parameters_on_a_model_without_parameters():
    with pytest.raises(ModelError, match=r"has no parameter 'x' \(it has: none\)"):
        load_model("normalise_incoming").with_parameters({"x": 1}, "w")


# ---------------------------------------------------------------- model-file errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ModelError) as info:
        load_model(missing)
    assert f"model file {str(missing)!r} not found" in str(info.value)
    with pytest.raises(ModelError, match=r"^proto\.yaml: models\.neuron: model file .*no_such_model\.yaml.* not found"):
        load_model("no_such_model", where="proto.yaml: models.neuron")


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        """
        kind: neuron
        equations: |
          dv/dt = -v / (10*ms) : volt
        threshold: [v > 1
        reset: v = 0
    """,
    )
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path} line 5: not valid YAML")
    assert "\n" not in message


def test_control_character_gives_a_one_line_error(tmp_path):
    path = write(tmp_path / "m.yaml", NEURON.replace("v = v0", "v = v0\x01"))
    with pytest.raises(ModelError, match="not valid YAML") as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["- kind: neuron\n", "just text\n", "", "# only a comment\n"])
def test_not_a_mapping(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ModelError, match="a model file must be a mapping of sections"):
        load_model(path)


@pytest.mark.parametrize("kind", ["neurone", None, "Synapse", 3])
def test_unknown_kind(tmp_path, kind):
    text = NEURON.replace("kind: neuron", f"kind: {kind}" if kind is not None else "")
    with pytest.raises(ModelError) as info:
        load_model(write(tmp_path / "m.yaml", text))
    assert f"kind must be one of input, neuron, synapse, normalisation, got {kind!r}" in str(info.value)


def test_unknown_section(tmp_path):
    path = write(tmp_path / "m.yaml", NEURON + "    on_pre: v += 1*mV\n")
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "unknown section 'on_pre' for a neuron model" in message


@pytest.mark.parametrize("section", ["equations", "threshold"])
def test_missing_required_section(tmp_path, section):
    lines = [line for line in textwrap.dedent(NEURON).splitlines() if not line.startswith(section)]
    if section == "equations":
        lines = [line for line in lines if "dv/dt" not in line]
    path = tmp_path / "m.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError, match=f"section '{section}' is missing or empty"):
        load_model(path)


def test_empty_required_section(tmp_path):
    path = write(tmp_path / "m.yaml", NEURON.replace("threshold: v > -50*mV", "threshold: '  '"))
    with pytest.raises(ModelError, match="section 'threshold' is missing or empty"):
        load_model(path)


def test_synapse_needs_on_pre(tmp_path):
    path = write(
        tmp_path / "s.yaml",
        """
        kind: synapse
        equations: |
          w : 1
        on_post: |
          w += 1
    """,
    )
    with pytest.raises(ModelError, match="section 'on_pre' is missing or empty"):
        load_model(path)


def test_optional_section_must_be_code(tmp_path):
    path = write(tmp_path / "m.yaml", NEURON.replace("reset: |\n      v = v0", "reset: [v = v0]"))
    with pytest.raises(ModelError, match="section 'reset' must be a string of Brian2 code"):
        load_model(path)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ("parameters: [1, 2]", "parameters must be a mapping name: value"),
        ("parameters: {2tau: 1 ms}", "parameters.2tau: not a valid identifier"),
        ("parameters: {tau-m: 1 ms}", "parameters.tau-m: not a valid identifier"),
        ("parameters: {tau: 12 parsecs}", "parameters.tau: unknown unit 'parsecs'"),
        ("parameters: {tau: yes}", "parameters.tau: expected a number with an optional unit, got True"),
    ],
)
def test_bad_parameters(tmp_path, params, fragment):
    neuron = textwrap.dedent(NEURON)
    text = neuron.split("parameters:")[0] + params + "\n" + neuron.split("n_steps: 3\n")[1]
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert fragment in message


def test_minimal_model_without_parameters(tmp_path):
    path = write(
        tmp_path / "m.yaml",
        """
        kind: input
        equations: |
          rate : Hz
        threshold: rand() < rate * dt
    """,
    )
    model = load_model(path)
    assert model.parameters == {}
    assert model.sections == {"equations": "rate : Hz", "threshold": "rand() < rate * dt"}
    assert model.section("reset") is None


def test_runtime_parameters_are_those_the_equations_declare():
    lif, yy = load_model("adaptive_lif"), load_model("competition_stdp_decay")
    assert set(lif.runtime_parameters) == {"tau_src", "tau_tgt"}
    assert set(yy.runtime_parameters) == {"A_pos", "A_neg", "weight_decay"}
    assert "tau_src" not in lif.compiled_parameters and same_quantity(lif.compiled_parameters["tau_m"], 20 * ms)
    assert set(yy.compiled_parameters) == {"c_w_min", "c_w_max", "w_psp"}
    assert load_model("stdp_postpre").runtime_parameters == ()


def test_a_name_in_a_comment_or_an_expression_is_no_declaration(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        textwrap.dedent("""\
        kind: neuron
        parameters: {a: 1, b: 2 ms, c: 3}
        equations: |
          dv/dt = -v / b : 1    # a: not declared here
          # c : 1 (shared)
          x = a * v : 1
          b : second (shared, constant)
        threshold: v > c
    """)
    )
    model = load_model(path)
    assert model.runtime_parameters == ("b",) and set(model.compiled_parameters) == {"a", "c"}
