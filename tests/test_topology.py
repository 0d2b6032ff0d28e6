"""Tests of brian_lcsnn.topology: sizes, receptive fields and the index conditions for ``Synapses.connect``.

Pure numpy; the condition strings are evaluated here with numpy (no Brian2 code generation).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from brian_lcsnn.topology import Geometry, GeometryError, competition_pairs, kernel_index, local_pairs

pytestmark = pytest.mark.codegen_independent

# The thesis's LC rows (crop 20, stride 4), thesis-spec.md section 4.5:
# (n_filters, kernel_size) -> (neurons, XY synapses, YY synapses, total parameters)
THESIS_LC = {
    (1000, 12): (9000, 1_296_000, 8_991_000, 10_287_000),
    (100, 12): (900, 129_600, 89_100, 218_700),
    (100, 8): (1600, 102_400, 158_400, 260_800),
    (25, 12): (225, 32_400, 5_400, 37_800),
    (25, 8): (400, 25_600, 9_600, 35_200),
}

# Geometries small enough to enumerate every (i, j) pair; (crop, kernel_size, stride, n_filters).
SMALL = [
    (20, 12, 4, 25),  # quickstart: 3 x 3 locations
    (20, 8, 4, 7),  # 4 x 4 locations
    (20, 7, 4, 3),  # stride that does not tile the crop: column/row 19 is never seen
    (28, 5, 3, 2),  # 8 x 8 locations, (28 - 5) % 3 == 2 leftover pixels
    (20, 20, 4, 4),  # kernel == crop: one location (FC-like)
    (10, 3, 1, 2),  # stride 1: overlapping fields
    (9, 3, 3, 1),  # stride == kernel: disjoint fields tiling exactly; one filter (no competition)
]
SMALL_IDS = [f"crop{c}-k{k}-s{s}-n{n}" for c, k, s, n in SMALL]


def eval_condition(condition: str, n_pre: int, n_post: int) -> np.ndarray:
    """Evaluate a Brian2 index condition on every (i, j): a boolean (n_pre, n_post) matrix.

    The clauses joined by `` and `` are evaluated separately on broadcast numpy arrays and combined with ``&``
    (numpy arrays cannot be combined with Python's ``and``; wrapping in ``&`` would change precedence).
    """
    i = np.arange(n_pre)[:, None]
    j = np.arange(n_post)[None, :]
    result = np.ones((n_pre, n_post), dtype=bool)
    for clause in condition.split(" and "):
        value = eval(clause, {"__builtins__": {}}, {"i": i, "j": j})
        result &= np.broadcast_to(np.asarray(value, dtype=bool), result.shape)
    return result


def eval_condition_scalar(condition: str, i: int, j: int) -> bool:
    """The whole condition (with Python's ``and``) on one pair of plain ints."""
    return bool(eval(condition, {"__builtins__": {}}, {"i": i, "j": j}))


def pairs_as_matrix(pairs, n_pre, n_post) -> np.ndarray:
    i, j = pairs
    matrix = np.zeros((n_pre, n_post), dtype=bool)
    matrix[i, j] = True
    return matrix


def pixels(rows, cols, crop):
    """Input indices of the pixels rows x cols (inclusive ranges) of a crop x crop image."""
    return {r * crop + c for r in rows for c in cols}


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(("n_filters", "kernel_size"), list(THESIS_LC), ids=[f"{n}/{k}" for n, k in THESIS_LC])
def test_thesis_sizes(n_filters, kernel_size):
    neurons, xy, yy, total = THESIS_LC[(n_filters, kernel_size)]
    g = Geometry(crop=20, kernel_size=kernel_size, stride=4, n_filters=n_filters)
    assert g.n_neurons == neurons
    assert g.n_xy == xy
    assert g.n_xy_parameters == xy
    assert g.n_yy == yy
    sizes = g.sizes()
    assert sizes == {
        "x_neurons": 400,
        "y_neurons": neurons,
        "locations": neurons // n_filters,
        "xy_synapses": xy,
        "xy_parameters": xy,
        "yy_synapses": yy,
        "total_parameters": total,
    }
    assert sizes["total_parameters"] == xy + yy


@pytest.mark.parametrize(("kernel_size", "side"), [(8, 4), (12, 3), (16, 2), (20, 1)])
def test_side_crop20_stride4(kernel_size, side):
    g = Geometry(20, kernel_size, 4, 10)
    assert g.side == side
    assert g.n_locations == side**2
    assert g.n_inputs == 400


def test_side_rounds_down_when_the_stride_does_not_tile():
    # (20 - 7) // 4 + 1 = 4 locations per row; starts 0, 4, 8, 12; the last field ends at 18
    assert Geometry(20, 7, 4, 1).side == 4
    assert Geometry(28, 5, 3, 1).side == 8
    assert Geometry(20, 12, 100, 1).side == 1


def test_defaults_and_frozen():
    g = Geometry(20, 12, 4, 25)
    assert (g.architecture, g.yy_pairs) == ("LC", "competition")
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.n_filters = 100
    assert (g.crop, g.kernel_size, g.stride, g.n_filters) == (20, 12, 4, 25)  # the failed assignment changed nothing
    assert hash(g) == hash(Geometry(20, 12, 4, 25))  # frozen: usable as a key (the build cache's structure)


def test_numpy_integers_are_accepted():
    g = Geometry(np.int64(20), np.int32(12), np.int64(4), np.int16(25))
    assert g.n_neurons == 225


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kernel_size": 24}, "kernel_size 24 is larger than the crop 20"),
        ({"kernel_size": 21}, "kernel_size 21 is larger than the crop 20"),
        ({"stride": 0}, "stride must be a positive integer"),
        ({"stride": -4}, "stride must be a positive integer"),
        ({"n_filters": 0}, "n_filters must be a positive integer"),
        ({"n_filters": True}, "n_filters must be a positive integer"),
        ({"kernel_size": True}, "kernel_size must be a positive integer"),
        ({"crop": 20.0}, "crop must be a positive integer"),
        ({"kernel_size": "12"}, "kernel_size must be a positive integer"),
        ({"architecture": "CONV"}, "architecture must be one of"),
        ({"architecture": "lc"}, "architecture must be one of"),
    ],
    ids=lambda v: repr(v) if isinstance(v, dict) else None,
)
def test_geometry_errors(kwargs, fragment):
    args = {"crop": 20, "kernel_size": 12, "stride": 4, "n_filters": 25} | kwargs
    with pytest.raises(GeometryError, match=fragment) as info:
        Geometry(**args)
    assert isinstance(info.value, ValueError)


def test_kernel_equal_to_crop_is_allowed():
    g = Geometry(20, 20, 4, 3)
    assert g.side == 1
    assert g.n_xy == 3 * 400


# ---------------------------------------------------------------- XY receptive fields


@pytest.mark.parametrize("params", SMALL, ids=SMALL_IDS)
def test_local_pairs_structure(params):
    g = Geometry(*params)
    i, j = local_pairs(g)
    assert i.dtype == np.int32 and j.dtype == np.int32
    assert len(i) == len(j) == g.n_xy
    assert i.min() >= 0 and i.max() < g.n_inputs
    assert j.min() >= 0 and j.max() < g.n_neurons
    # pre-major: sorted by pre, then post, and no duplicates
    key = i.astype(np.int64) * g.n_neurons + j
    assert np.all(np.diff(key) > 0)
    # every post neuron has exactly kernel_size**2 distinct inputs
    counts = np.bincount(j, minlength=g.n_neurons)
    assert np.all(counts == g.kernel_size**2)


@pytest.mark.parametrize("params", SMALL, ids=SMALL_IDS)
def test_local_pairs_form_the_window(params):
    """Each Y neuron sees exactly the k x k window at its location; all channels of a location see the same pixels."""
    g = Geometry(*params)
    c, k, s, n = g.crop, g.kernel_size, g.stride, g.side
    matrix = pairs_as_matrix(local_pairs(g), g.n_inputs, g.n_neurons)
    for post in range(g.n_neurons):
        loc = post % g.n_locations
        row0, col0 = (loc // n) * s, (loc % n) * s
        expected = pixels(range(row0, row0 + k), range(col0, col0 + k), c)
        assert set(np.flatnonzero(matrix[:, post]).tolist()) == expected, post


def test_local_pairs_by_hand_25_12():
    g = Geometry(20, 12, 4, 25)
    assert (g.side, g.n_locations) == (3, 9)
    matrix = pairs_as_matrix(local_pairs(g), 400, 225)

    def seen(post):
        return set(np.flatnonzero(matrix[:, post]).tolist())

    centre = pixels(range(4, 16), range(4, 16), 20)
    for f in (0, 7, 24):
        assert seen(f * 9 + 4) == centre  # loc 4: centre, rows 4..15, cols 4..15
    assert seen(0) == pixels(range(0, 12), range(0, 12), 20)  # loc 0: top-left
    assert seen(2) == pixels(range(0, 12), range(8, 20), 20)  # loc 2: top-right
    assert seen(5) == pixels(range(4, 16), range(8, 20), 20)  # loc 5: middle row, right
    assert seen(24 * 9 + 8) == pixels(range(8, 20), range(8, 20), 20)  # last neuron: bottom-right
    # explicit corner pixels of the centre field
    assert {84, 95, 304, 315} <= seen(4)  # (4,4), (4,15), (15,4), (15,15)
    assert not {83, 96, 64, 324} & seen(4)  # (4,3), (4,16), (3,4), (16,4)


def test_local_pairs_by_hand_non_tiling_stride():
    g = Geometry(20, 7, 4, 2)  # starts 0, 4, 8, 12: the last field covers 12..18
    matrix = pairs_as_matrix(local_pairs(g), 400, g.n_neurons)
    seen_by_anyone = matrix.any(axis=1).reshape(20, 20)
    assert not seen_by_anyone[19, :].any()
    assert not seen_by_anyone[:, 19].any()
    assert seen_by_anyone[:19, :19].all()
    # neuron f=1, loc 15 (row 3, col 3): rows 12..18, cols 12..18
    assert set(np.flatnonzero(matrix[:, 16 + 15]).tolist()) == pixels(range(12, 19), range(12, 19), 20)


@pytest.mark.parametrize("params", SMALL + [(20, 8, 4, 100)], ids=SMALL_IDS + ["crop20-k8-s4-n100"])
def test_xy_condition_selects_exactly_local_pairs(params):
    g = Geometry(*params)
    selected = eval_condition(g.xy_condition(), g.n_inputs, g.n_neurons)
    i, j = np.nonzero(selected)  # row-major: pre-major, as connect(condition=...) creates them
    li, lj = local_pairs(g)
    np.testing.assert_array_equal(i, li)
    np.testing.assert_array_equal(j, lj)


@pytest.mark.parametrize("params", [(20, 12, 4, 25), (20, 7, 4, 3), (28, 5, 3, 2)])
def test_xy_condition_with_python_and(params):
    """The string as written (Python/Brian2 ``and``) agrees with local_pairs on sampled pairs."""
    g = Geometry(*params)
    condition = g.xy_condition()
    assert "\n" not in condition
    code = compile(condition, "<xy_condition>", "eval")
    matrix = pairs_as_matrix(local_pairs(g), g.n_inputs, g.n_neurons)
    rng = np.random.default_rng(0)
    pres = rng.integers(0, g.n_inputs, 400)
    posts = rng.integers(0, g.n_neurons, 400)
    hits = 0
    for pre, post in zip(pres.tolist(), posts.tolist(), strict=True):
        value = bool(eval(code, {"__builtins__": {}}, {"i": pre, "j": post}))
        assert value == matrix[pre, post], (pre, post)
        hits += value
    # and on every true pair of a few neurons
    for post in (0, g.n_neurons // 2, g.n_neurons - 1):
        for pre in np.flatnonzero(matrix[:, post]).tolist():
            assert eval_condition_scalar(condition, pre, post)


# ---------------------------------------------------------------- YY competition


@pytest.mark.parametrize("params", SMALL, ids=SMALL_IDS)
def test_competition_pairs(params):
    g = Geometry(*params)
    i, j = competition_pairs(g)
    assert i.dtype == np.int32 and j.dtype == np.int32
    assert len(i) == len(j) == g.n_yy
    assert not np.any(i == j)
    assert np.all(i % g.n_locations == j % g.n_locations)
    key = i.astype(np.int64) * g.n_neurons + j
    assert np.all(np.diff(key) > 0)
    # every neuron inhibits, and is inhibited by, the other n_filters - 1 channels of its location
    assert np.all(np.bincount(j, minlength=g.n_neurons) == g.n_filters - 1)
    assert np.all(np.bincount(i, minlength=g.n_neurons) == g.n_filters - 1)


def test_competition_pairs_by_hand():
    g = Geometry(20, 12, 4, 3)  # 9 locations, 3 filters: neurons loc, loc + 9, loc + 18
    i, j = competition_pairs(g)
    pairs = set(zip(i.tolist(), j.tolist(), strict=True))
    assert len(pairs) == 9 * 3 * 2
    assert {(4, 13), (4, 22), (13, 4), (13, 22), (22, 4), (22, 13)} <= pairs
    assert (4, 4) not in pairs and (4, 5) not in pairs and (4, 14) not in pairs
    assert sorted(jj for ii, jj in pairs if ii == 0) == [9, 18]


def test_one_filter_has_no_competition():
    g = Geometry(20, 12, 4, 1)
    assert g.n_yy == 0
    i, j = competition_pairs(g)
    assert len(i) == len(j) == 0
    assert not eval_condition(g.yy_condition(), g.n_neurons, g.n_neurons).any()


@pytest.mark.parametrize("params", SMALL, ids=SMALL_IDS)
def test_yy_condition_selects_exactly_competition_pairs(params):
    g = Geometry(*params)
    selected = eval_condition(g.yy_condition(), g.n_neurons, g.n_neurons)
    assert not selected.diagonal().any()
    i, j = np.nonzero(selected)
    ci, cj = competition_pairs(g)
    np.testing.assert_array_equal(i, ci)
    np.testing.assert_array_equal(j, cj)


def test_yy_condition_with_python_and():
    g = Geometry(20, 8, 4, 5)  # 16 locations
    condition = g.yy_condition()
    assert eval_condition_scalar(condition, 3, 19)
    assert eval_condition_scalar(condition, 67, 3)
    assert not eval_condition_scalar(condition, 3, 3)
    assert not eval_condition_scalar(condition, 3, 4)
    assert not eval_condition_scalar(condition, 3, 20)


# ---------------------------------------------------------------- C and FC networks (thesis table rows)


@pytest.mark.parametrize(
    "n_filters, kernel, neurons, xy_parameters, yy, total",
    [
        # C: n k^2 + c^2 n (n - 1), the English paper's corrected count (thesis-spec.md section 4.5)
        (169, 12, 1521, 24_336, 255_528, 279_864),
        (81, 12, 729, 11_664, 58_320, 69_984),
        (100, 8, 1600, 6_400, 158_400, 164_800),
        (25, 12, 225, 3_600, 5_400, 9_000),
        (25, 8, 400, 1_600, 9_600, 11_200),
    ],
)
def test_convolution_sizes(n_filters, kernel, neurons, xy_parameters, yy, total):
    g = Geometry(crop=20, kernel_size=kernel, stride=4, n_filters=n_filters, architecture="C")
    sizes = g.sizes()
    assert sizes["y_neurons"] == neurons
    assert sizes["xy_synapses"] == neurons * kernel**2  # every location has its synapses; they share weights
    assert sizes["xy_parameters"] == xy_parameters
    assert sizes["yy_synapses"] == yy
    assert sizes["total_parameters"] == total


def test_fully_connected_sizes_and_geometry():
    g = Geometry(crop=20, kernel_size=20, stride=4, n_filters=100, architecture="FC")
    assert g.sizes() == {
        "x_neurons": 400,
        "y_neurons": 100,
        "locations": 1,
        "xy_synapses": 40_000,
        "xy_parameters": 40_000,
        "yy_synapses": 9_900,
        "total_parameters": 49_900,
    }
    i, j = local_pairs(g)
    assert len(i) == 40_000 and set(np.bincount(j)) == {400}
    with pytest.raises(GeometryError, match="kernel_size must be 20"):
        Geometry(crop=20, kernel_size=12, stride=4, n_filters=100, architecture="FC")


def test_kernel_index_maps_every_location_onto_the_same_kernel():
    g = Geometry(crop=8, kernel_size=4, stride=2, n_filters=3, architecture="C")
    i, j = local_pairs(g)
    kidx = kernel_index(g)
    # each channel's synapses cover its k x k kernel once per location
    for f in range(3):
        mine = j // g.n_locations == f
        assert np.all(np.bincount(kidx[mine] - f * 16, minlength=16) == g.n_locations)
    # hand-checked: channel 1, location 4 (row 1, col 1 -> rows/cols 2..5), pixel (3, 5) -> kernel (1, 3)
    sel = (j == 1 * 9 + 4) & (i == 3 * 8 + 5)
    assert kidx[sel].tolist() == [16 + 1 * 4 + 3]
    # the Brian2 expression computes the same numbers
    expr = g.kernel_index_expression()
    assert np.array_equal(eval(expr, {}, {"i": i.astype(np.int64), "j": j.astype(np.int64)}), kidx)
