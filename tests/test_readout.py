"""Tests of brian_lcsnn.readout: votes, voting rules, linear readout and accuracy."""

import logging

import numpy as np
import pytest

from brian_lcsnn.readout import (
    VOTING_METHODS,
    LinearReadout,
    accuracy,
    best_voting,
    compute_votes,
    evaluate,
    predict,
    top_n_votes,
    voting_scores,
)

pytestmark = pytest.mark.codegen_independent

# fmt: off
# One sample, F = 2 filters, L = 2 locations: S[f, loc].
S_HAND = np.array([[1, 2],
                   [0, 1]])
# Votes V[class, f, loc] for 3 classes.
V_HAND = np.array([[[3, 0], [0, 3]],
                   [[1, 2], [0, 0]],
                   [[0, 2], [3, 3]]], dtype=float)
# fmt: on
# S * V:  class 0 [[3, 0], [0, 3]], class 1 [[1, 4], [0, 0]], class 2 [[0, 4], [0, 3]]
# patch_voting: class 0: max(3, 0) + max(0, 3) = 6 (loc 1 won by filter 1)
#               class 1: max(1, 0) + max(4, 0) = 5 (loc 1 won by filter 0)
#               class 2: max(0, 0) + max(4, 3) = 4
# all_voting:   6, 5, 7
# spikes_first: loc 0 -> f* = 0 (1 > 0): 1 * V[:, 0, 0] = [3, 1, 0]
#               loc 1 -> f* = 0 (2 > 1): 2 * V[:, 0, 1] = [0, 4, 4]   -> [3, 5, 4]
EXPECTED_HAND = {
    "patch_voting": ([6.0, 5.0, 4.0], 0),
    "all_voting": ([6.0, 5.0, 7.0], 2),
    "spikes_first": ([3.0, 5.0, 4.0], 1),
}


def reference_scores(counts, votes, method):
    """Direct per-sample loop over the formulas of the spec, for comparison."""
    out = np.zeros((len(counts), len(votes)))
    for i, s in enumerate(counts.astype(float)):
        prod = s[None] * votes
        if method == "patch_voting":
            out[i] = prod.max(axis=1).sum(axis=1)
        elif method == "all_voting":
            out[i] = prod.sum(axis=(1, 2))
        else:
            for loc in range(s.shape[1]):
                f = int(np.argmax(s[:, loc]))
                out[i] += s[f, loc] * votes[:, f, loc]
    return out


@pytest.mark.parametrize("method", VOTING_METHODS)
def test_voting_rules_by_hand(method):
    counts = np.stack([S_HAND, np.zeros_like(S_HAND)])  # second sample: no spike at all
    scores = voting_scores(counts, V_HAND, method)
    expected, label = EXPECTED_HAND[method]
    np.testing.assert_array_equal(scores, [expected, [0.0, 0.0, 0.0]])
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(predict(scores, counts), [label, -1])


def test_voting_rules_disagree_on_hand_example():
    preds = {m: int(predict(voting_scores(S_HAND[None], V_HAND, m), S_HAND[None])[0]) for m in VOTING_METHODS}
    assert preds == {"patch_voting": 0, "all_voting": 2, "spikes_first": 1}


def test_spikes_first_ties_take_first_filter():
    counts = np.array([[[2], [2]]])  # F = 2, L = 1, tie between filters
    votes = np.array([[[1.0], [0.0]], [[0.0], [5.0]]])
    np.testing.assert_array_equal(voting_scores(counts, votes, "spikes_first"), [[2.0, 0.0]])
    np.testing.assert_array_equal(voting_scores(counts, votes, "patch_voting"), [[2.0, 10.0]])


def test_fully_connected_2d_counts():
    counts = np.array([[1, 3, 0]])  # (n, F): L = 1
    votes = np.array([[2.0, 1.0, 9.0], [0.0, 1.5, 0.0]])  # (classes, F)
    # products: class 0 [2, 3, 0], class 1 [0, 4.5, 0]
    np.testing.assert_array_equal(voting_scores(counts, votes, "patch_voting"), [[3.0, 4.5]])
    np.testing.assert_array_equal(voting_scores(counts, votes, "all_voting"), [[5.0, 4.5]])
    np.testing.assert_array_equal(voting_scores(counts, votes, "spikes_first"), [[3.0, 4.5]])


def test_unknown_method_and_shape_mismatch():
    with pytest.raises(ValueError, match="max_voting"):
        voting_scores(S_HAND[None], V_HAND, "max_voting")
    with pytest.raises(ValueError, match="does not match"):
        voting_scores(np.zeros((1, 3, 2), int), V_HAND, "all_voting")


@pytest.mark.parametrize("method", VOTING_METHODS)
@pytest.mark.parametrize("batch_size", [1, 3, 7, None])
def test_batched_scores_match_reference(method, batch_size):
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.3, size=(20, 5, 4))
    counts[4] = 0
    counts[7] = rng.poisson(3.0, size=(5, 4)) + 1  # every neuron spikes: no silent filter
    votes = rng.normal(size=(4, 5, 4))  # negative votes exercise the silent-filter zeros in the max
    scores = voting_scores(counts, votes, method, batch_size=batch_size)
    np.testing.assert_allclose(scores, reference_scores(counts, votes, method), rtol=1e-12, atol=1e-12)


def test_compute_votes_means_and_absent_label(caplog):
    counts = np.array(
        [
            [[1, 0], [2, 4]],
            [[3, 0], [0, 0]],
            [[0, 5], [1, 1]],
        ]
    )
    labels = np.array([0, 0, 2])
    with caplog.at_level(logging.WARNING, logger="brian_lcsnn.readout"):
        votes = compute_votes(counts, labels, n_classes=3, batch_size=2)
    assert votes.shape == (3, 2, 2) and votes.dtype == np.float64
    np.testing.assert_array_equal(votes[0], [[2.0, 0.0], [1.0, 2.0]])
    np.testing.assert_array_equal(votes[1], np.zeros((2, 2)))
    np.testing.assert_array_equal(votes[2], [[0.0, 5.0], [1.0, 1.0]])
    assert "[1]" in caplog.text
    with pytest.raises(ValueError):
        compute_votes(counts, np.array([0, 1, 3]), n_classes=3)


def test_top_n_votes():
    # 4 classes, F = 2, L = 1: neuron 0 votes [4, 1, 4, 2], neuron 1 votes [0, 3, 2, 1]
    votes = np.array([[4.0, 0.0], [1.0, 3.0], [4.0, 2.0], [2.0, 1.0]])[:, :, None]
    top1 = top_n_votes(votes, 1)
    np.testing.assert_array_equal(top1[:, :, 0], [[4, 0], [0, 3], [0, 0], [0, 0]])  # tie 4/4: class 0 kept
    top2 = top_n_votes(votes, 2)
    np.testing.assert_array_equal(top2[:, :, 0], [[4, 0], [0, 3], [4, 2], [0, 0]])
    np.testing.assert_array_equal(top_n_votes(votes, 10), votes)
    with pytest.raises(ValueError):
        top_n_votes(votes, 0)


def test_predict_ties_and_no_vote():
    scores = np.array([[1.0, 3.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    counts = np.array([[1, 0], [0, 0], [0, 4], [0, 1]])
    # row 2 spiked only in neurons without votes: all scores zero -> -1 (thesis: score.sum() == 0)
    np.testing.assert_array_equal(predict(scores, counts), [1, -1, -1, 0])
    assert predict(scores, counts).dtype == np.int64


def test_accuracy_numbers():
    result = accuracy(np.array([1, 2, -1, 0]), np.array([1, 2, 3, 0]))
    assert result["accuracy"] == 0.75 and result["n"] == 4
    assert result["error"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4))
    assert accuracy([5, 5], [5, 5])["error"] == 0.0
    with pytest.raises(ValueError):
        accuracy([], [])


def separable_problem(n, seed, n_classes=3, f=4, loc=3):
    """Counts where each class drives its own block of neurons."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    rates = np.full((n_classes, f * loc), 0.1)
    for c in range(n_classes):
        rates[c, c * 4 : (c + 1) * 4] = 3.0
    counts = rng.poisson(rates[labels]).reshape(n, f, loc)
    return counts, labels


@pytest.mark.parametrize("kind", ["logistic", "sgd"])
def test_linear_readout_learns_and_round_trips(kind, tmp_path):
    train_x, train_y = separable_problem(300, seed=1)
    test_x, test_y = separable_problem(300, seed=2)
    test_x[0] = 0
    readout = LinearReadout(kind=kind, seed=0).fit(train_x, train_y)
    pred = readout.predict(test_x)
    assert pred[0] == -1 and pred.dtype == np.int64
    assert accuracy(pred, test_y)["accuracy"] > 0.95
    np.testing.assert_array_equal(readout.predict(test_x.reshape(300, -1)), pred)  # (n, N) input

    np.savez(tmp_path / "readout.npz", **readout.to_arrays())
    with np.load(tmp_path / "readout.npz", allow_pickle=False) as data:
        rebuilt = LinearReadout.from_arrays(data)
    assert rebuilt.kind == kind
    np.testing.assert_array_equal(rebuilt.predict(test_x), pred)
    np.testing.assert_array_equal(rebuilt.decision_function(test_x), readout.decision_function(test_x))


def test_linear_readout_sgd_seed_is_deterministic():
    x, y = separable_problem(200, seed=3)
    a = LinearReadout("sgd", seed=5).fit(x, y).to_arrays()["coef"]
    b = LinearReadout("sgd", seed=5).fit(x, y).to_arrays()["coef"]
    np.testing.assert_array_equal(a, b)


def test_linear_readout_errors():
    with pytest.raises(ValueError, match="svm"):
        LinearReadout(kind="svm")
    with pytest.raises(RuntimeError):
        LinearReadout().predict(np.zeros((1, 2, 2)))


def test_evaluate_keys_and_values():
    cal_x, cal_y = separable_problem(300, seed=4)
    test_x, test_y = separable_problem(100, seed=5)
    test_x[:2] = 0
    votes = compute_votes(cal_x, cal_y, n_classes=3)
    linear = LinearReadout("logistic").fit(cal_x, cal_y)
    result = evaluate(test_x, test_y, votes, linear=linear, top_n=(1, 3))
    assert set(result) == {"patch_voting", "all_voting", "spikes_first", "linear", "top_1", "top_3"}
    for entry in result.values():
        assert set(entry) == {"accuracy", "error", "n", "no_spike"}
        assert entry["n"] == 100 and entry["no_spike"] == 2
    direct = accuracy(predict(voting_scores(test_x, top_n_votes(votes, 1), "patch_voting"), test_x), test_y)
    assert result["top_1"]["accuracy"] == direct["accuracy"]
    assert result["top_3"]["accuracy"] == result["patch_voting"]["accuracy"]  # top-3 of 3 classes = all votes
    assert result["all_voting"]["accuracy"] > 0.9
    assert set(evaluate(test_x, test_y, votes)) == set(VOTING_METHODS)


def test_best_voting():
    scores = {
        "patch_voting": {"accuracy": 0.8},
        "all_voting": {"accuracy": 0.85},
        "spikes_first": {"accuracy": 0.85},
        "linear": {"accuracy": 0.99},
        "top_3": {"accuracy": 0.95},
    }
    assert best_voting(scores) == ("all_voting", {"accuracy": 0.85})
    with pytest.raises(ValueError):
        best_voting({"linear": {"accuracy": 1.0}})
