"""Tests of benchmarks/bench_lc.py that run nothing: the limit's output parser, the thesis parameters, bad input.

No timing is asserted anywhere: speed is measured by running the benchmark, not by tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from brian_lcsnn.protocol import load_protocol

pytestmark = pytest.mark.codegen_independent

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_lc", ROOT / "benchmarks" / "bench_lc.py")
bench_lc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_lc)

# captured from `lcsnn_limit bench --F 25 --prec f64 --warm 10 --n 20 --reps 3 --mw 0.46 --cw -100.0`
LIMIT_OUTPUT = """\
{"prec":"f64","F":25,"mode":"train","n":20,"samples_per_s":[1104.2,665.5,1398.9],"sps_min":665.5,"sps_median":1104.2,\
"events_per_sample":333911,"xy_events_per_sample":325142,"x_spikes_per_sample":3257.8,"y_spikes_per_sample":365.4,\
"ns_per_event_median":2.867,"ns_per_xy_event_median":2.950,"norm_eval":0,"dense_dep":0}
{"prec":"f64","F":25,"mode":"infer","n":20,"samples_per_s":[1923.1,2531.7,8433.7],"sps_min":1923.1,"sps_median":2531.7,\
"events_per_sample":344178,"xy_events_per_sample":336320,"x_spikes_per_sample":3390.0,"y_spikes_per_sample":327.4,\
"ns_per_event_median":1.342,"ns_per_xy_event_median":1.374,"norm_eval":0,"dense_dep":0}
"""


def test_parse_limit_output_reads_both_modes():
    records = bench_lc.parse_limit_output("some banner line\n" + LIMIT_OUTPUT)
    assert set(records) == {"train", "infer"}
    assert records["train"]["sps_median"] == 1104.2
    assert records["infer"]["sps_median"] == 2531.7
    assert records["train"]["samples_per_s"] == [1104.2, 665.5, 1398.9]
    assert records["infer"]["y_spikes_per_sample"] == 327.4


def test_parse_limit_output_names_a_missing_mode():
    train_only = LIMIT_OUTPUT.splitlines()[0]
    with pytest.raises(bench_lc.BenchError, match="no infer line"):
        bench_lc.parse_limit_output(train_only, "lcsnn_limit")
    with pytest.raises(bench_lc.BenchError, match=r"lcsnn_limit: not a JSON line"):
        bench_lc.parse_limit_output('{"mode": "train", ', "lcsnn_limit")


@pytest.mark.parametrize("protocol", ["thesis/lc25_k12", "thesis/lc100_k12", "thesis/lc1000_k12"])
def test_thesis_parameters_are_the_protocols(protocol):
    net = load_protocol(protocol)["network"]
    assert bench_lc.thesis_parameters(net["n_filters"]) == (net["mean_weight"], net["c_w"])


def test_missing_limit_source_is_bad_input(tmp_path):
    with pytest.raises(bench_lc.BenchError, match=r"lcsnn_limit\.cpp: limit source not found") as err:
        bench_lc.build_limit(tmp_path, tmp_path / "cache")
    assert err.value.code == 2
    assert not (tmp_path / "cache").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--filters", "25", "100", "--samples", "10", "20", "30"], "--samples: give one value or one per --filters"),
        (["--repeat", "0"], "--repeat: must be >= 1, got 0"),
        (["--limit", "/nonexistent/lcsnn_limit"], "--limit /nonexistent/lcsnn_limit: not an executable file"),
        (["--float", "float16"], "--float: invalid choice"),
    ],
)
def test_bad_arguments_one_line_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench_lc.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bad_limit_source_exit_2(tmp_path, capsys):
    assert bench_lc.main(["--filters", "25", "--samples", "10", "--limit-source", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_lc.py: error: ") and "limit source not found" in err and err.count("\n") == 1


def test_bad_thesis_row_is_checked_before_anything_runs(tmp_path, capsys):
    # a missing protocol fails at once, before the limit is built (--limit-source would fail too, later)
    code = bench_lc.main(["--thesis-row", str(tmp_path / "none.yaml"), "--limit-source", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_lc.py: error: --thesis-row: ") and "protocol file not found" in err, err
    assert err.count("\n") == 1
    fc = tmp_path / "fc.yaml"
    fc.write_text((ROOT / "protocols" / "thesis" / "fc100.yaml").read_text())
    assert bench_lc.main(["--thesis-row", str(fc), "--no-limit"]) == 2
    assert "the limit models LC networks, got FC" in capsys.readouterr().err


def test_table_shows_both_figures_and_the_ratios():
    row = dict(n_filters=100, float="float64", repeat=3, train_samples_per_s=146.2, infer_samples_per_s=127.2,
               limit_train_samples_per_s=567.5, limit_infer_samples_per_s=1245.1, ratio_train=0.258,
               ratio_infer=0.102)  # fmt: skip
    thesis = dict(thesis_row="protocols/thesis/lc100_k12.yaml", samples=25000, wall_s=289.7, samples_per_s=86.3,
                  limit_train_samples_per_s=540.5, ratio_train=0.16)  # fmt: skip
    lines = bench_lc.table([row], thesis).splitlines()
    assert lines[1].split() == "LC 100/12 float64 146.2 / 127.2 567.5 / 1245.1 0.258 / 0.102".split()
    assert "25000 samples in 289.7 s = 86.3 samples/s (limit train 540.5, ratio 0.160)" in lines[2]
    assert "medians of 3" in lines[3]
    assert bench_lc.table([], thesis).splitlines()[0].startswith("thesis row lc100_k12.yaml")  # no empty header
