"""Label readout from hidden-layer spike counts: votes, voting rules, linear classifier, accuracy.

Implements section 6.2-6.5 of the thesis specification. Spike counts of the Y layer arrive as integer
arrays of shape ``(n_samples, F, L)`` (F filters, L locations, flat neuron index ``f * L + loc``); a 2-D
array ``(n_samples, F)`` is read as a fully connected layer with ``L = 1``. Votes have shape
``(n_classes, F, L)``. All voting rules work in sample batches, so no ``(n_samples, n_classes, F, L)``
array is ever built.
"""

import logging

import numpy as np

__all__ = [
    "VOTING_METHODS",
    "compute_votes",
    "top_n_votes",
    "voting_scores",
    "predict",
    "accuracy",
    "LinearReadout",
    "evaluate",
    "best_voting",
    "headline_test_phase",
]

logger = logging.getLogger(__name__)

VOTING_METHODS = ("patch_voting", "all_voting", "spikes_first")

# Upper bound on batch_size * n_neurons per batch (patch_voting holds at most 10x that many floats).
_BATCH_ELEMENTS = 2**21
_MAX_BATCH = 512


def _as3d(counts, name="counts"):
    counts = np.asarray(counts)
    if counts.ndim == 2:
        counts = counts[:, :, None]
    if counts.ndim != 3:
        raise ValueError(f"{name} must have shape (n, F, L) or (n, F), got {counts.shape}")
    return counts


def _batches(n_samples, n_neurons, batch_size=None):
    if batch_size is None:
        batch_size = int(np.clip(_BATCH_ELEMENTS // max(n_neurons, 1), 1, _MAX_BATCH))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n_samples, batch_size):
        yield slice(start, min(start + batch_size, n_samples))


def _no_spike(counts):
    """Boolean mask of samples whose spike counts are all zero."""
    counts = np.asarray(counts)
    return ~counts.reshape(len(counts), -1).any(axis=1)


def compute_votes(counts, labels, n_classes=10, batch_size=None):
    """Mean spike count of every neuron for every label (section 6.2).

    Parameters
    ----------
    counts : array_like, shape (n_samples, F, L) or (n_samples, F)
        Calibration spike counts.
    labels : array_like of int, shape (n_samples,)
        Labels in ``[0, n_classes)``.
    n_classes : int
        Number of classes.
    batch_size : int, optional
        Samples per batch (default: chosen from the layer size).

    Returns
    -------
    numpy.ndarray, shape (n_classes, F, L), float64
        ``votes[l]`` is the mean count tensor over samples of label ``l``; zeros (with a warning)
        for a label that does not occur.
    """
    counts = _as3d(counts)
    labels = np.asarray(labels)
    n, f, loc = counts.shape
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    sums = np.zeros(n_classes * f * loc)
    for sl in _batches(n, f * loc, batch_size):
        vals, bi, nid = _spikes(counts[sl])
        key = labels[sl].astype(np.int64)[bi] * (f * loc) + nid
        sums += np.bincount(key, weights=vals, minlength=sums.size)
    per_class = np.bincount(labels.astype(np.int64), minlength=n_classes)
    absent = np.flatnonzero(per_class == 0)
    if absent.size:
        logger.warning("labels %s absent from the calibration set: their votes are zero", absent.tolist())
    return (sums.reshape(n_classes, -1) / np.maximum(per_class, 1)[:, None]).reshape(n_classes, f, loc)


def top_n_votes(votes, n):
    """Keep each neuron's votes for its ``n`` best classes only (legacy top-n voting, section 6.3).

    Parameters
    ----------
    votes : array_like, shape (n_classes, F, L) or (n_classes, F)
    n : int
        Number of classes kept per neuron (>= 1); ties are broken stably (lower class index kept).

    Returns
    -------
    numpy.ndarray
        Float64 copy of ``votes`` with all other entries set to zero.
    """
    votes = np.asarray(votes, dtype=np.float64)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    order = np.argsort(-votes, axis=0, kind="stable")[:n]
    keep = np.zeros(votes.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=0)
    return np.where(keep, votes, 0.0)


def _spikes(s):
    """Non-zero entries of a count batch ``s`` (B, F, L): values (float64), sample and flat neuron index."""
    flat = s.reshape(-1)
    idx = np.flatnonzero(flat != 0)
    n_neurons = s.shape[1] * s.shape[2]
    return flat[idx].astype(np.float64), idx // n_neurons, idx % n_neurons


def _scores_many(counts, jobs, batch_size=None):
    """Scores (n, C) for each ``(votes, method)`` job, sharing one pass over the count batches."""
    counts = _as3d(counts)
    n, f_n, l_n = counts.shape
    flat_votes = []
    for votes, method in jobs:
        if method not in VOTING_METHODS:
            raise ValueError(f"unknown voting method {method!r}; expected one of {VOTING_METHODS}")
        votes = _as3d(votes, "votes").astype(np.float64, copy=False)
        if votes.shape[1:] != (f_n, l_n):
            raise ValueError(f"votes shape {votes.shape} does not match counts shape {counts.shape}")
        flat_votes.append(votes.reshape(len(votes), f_n * l_n))
    out = [np.empty((n, len(v))) for v in flat_votes]
    methods = {m for _, m in jobs}
    for sl in _batches(n, f_n * l_n, batch_size):
        s = counts[sl]
        b_n = len(s)
        if methods - {"spikes_first"}:
            vals, bi, nid = _spikes(s)
        if "spikes_first" in methods:
            fstar = s.argmax(axis=1)  # (B, L), first index on ties
            sstar = np.take_along_axis(s, fstar[:, None, :], axis=1)[:, 0, :].astype(np.float64)
            fstar = fstar * l_n + np.arange(l_n)
        if "patch_voting" in methods:
            # Max over filters per (sample, location). Silent neurons contribute exactly 0, so a
            # group is the max over its spiking neurons, raised to 0 if some filter of it is silent.
            key = bi * l_n + nid % l_n
            silent = np.bincount(key, minlength=b_n * l_n) < f_n
        for (_, method), vt, scores in zip(jobs, flat_votes, out, strict=True):
            if method == "spikes_first":
                scores[sl] = np.einsum("bl,cbl->bc", sstar, vt[:, fstar])
                continue
            prod = vals * vt[:, nid]  # (C, nnz): only spiking neurons contribute
            if method == "all_voting":
                scores[sl] = np.stack([np.bincount(bi, weights=p, minlength=b_n) for p in prod], axis=1)
                continue
            gmax = np.full((len(vt), b_n * l_n), -np.inf)
            for c, p in enumerate(prod):
                np.maximum.at(gmax[c], key, p)
            gmax[:, silent] = np.maximum(gmax[:, silent], 0.0)
            scores[sl] = gmax.reshape(len(vt), b_n, l_n).sum(axis=2).T
    return out


def voting_scores(counts, votes, method, batch_size=None):
    """Class scores of every sample under one voting rule (section 6.3).

    Parameters
    ----------
    counts : array_like, shape (n_samples, F, L) or (n_samples, F)
    votes : array_like, shape (n_classes, F, L) or (n_classes, F)
    method : {"patch_voting", "all_voting", "spikes_first"}
        ``patch_voting``: ``sum_loc max_f S[f, loc] V[l, f, loc]``; ``all_voting``:
        ``sum_{f, loc} S V[l]``; ``spikes_first``: at each location the filter with most spikes
        (first on ties) adds ``S[f*, loc] V[:, f*, loc]``.
    batch_size : int, optional
        Samples per batch (default: chosen from the layer size).

    Returns
    -------
    numpy.ndarray, shape (n_samples, n_classes), float64
    """
    return _scores_many(counts, [(votes, method)], batch_size)[0]


def predict(scores, counts):
    """Predicted class per sample: argmax of the scores (first on ties), or -1 without any vote.

    Parameters
    ----------
    scores : array_like, shape (n_samples, n_classes)
    counts : array_like, shape (n_samples, ...)
        Spike counts of the same samples.

    Returns
    -------
    numpy.ndarray of int64
        -1 where the sample has no Y spike at all, and also (as the thesis's ``score.sum() == 0``
        test) where every score is zero, e.g. when only neurons with all-zero votes spiked.
    """
    if len(scores) != len(counts):
        raise ValueError(f"{len(scores)} score rows for {len(counts)} samples")
    return _predict(scores, _no_spike(counts))


def _predict(scores, no_spike):
    scores = np.asarray(scores)
    pred = scores.argmax(axis=1).astype(np.int64)
    pred[no_spike | ~np.any(scores != 0, axis=1)] = -1
    return pred


def accuracy(predictions, labels):
    """Accuracy and its binomial standard error (section 6.5).

    Returns
    -------
    dict
        ``{"accuracy": p, "error": sqrt(p (1 - p) / n), "n": n}``.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(f"shape mismatch: {predictions.shape} vs {labels.shape}")
    n = int(labels.size)
    if n == 0:
        raise ValueError("accuracy of zero samples is undefined")
    p = float(np.mean(predictions == labels))
    return {"accuracy": p, "error": float(np.sqrt(p * (1.0 - p) / n)), "n": n}


class LinearReadout:
    """Linear classifier on flattened spike-count vectors (scikit-learn).

    Parameters
    ----------
    kind : {"logistic", "sgd"}
        ``"logistic"``: multinomial ``LogisticRegression`` (lbfgs, ``max_iter=1000``) on raw counts
        (fixed scale factor 1) held as a sparse CSR matrix. On proxy LC spike counts from MNIST
        (9 locations x 100 or 1000 filters) raw counts with ``C=0.1`` beat per-neuron
        standardisation (which inflates rarely firing neurons) by about 1 point, and lbfgs
        converges in under 40 iterations. ``"sgd"``: the thesis classifier, ``SGDClassifier`` with
        library defaults (hinge, L2, alpha=1e-4, one-vs-rest) on raw dense float64 counts (dense as
        in the thesis: sparse input changes SGD's intercept updates), ``random_state=seed``.
    seed : int
        Random state of the SGD classifier (lbfgs is deterministic).
    C : float
        Inverse L2 regularisation strength of the logistic readout.
    """

    KINDS = ("logistic", "sgd")

    def __init__(self, kind="logistic", seed=0, C=0.1):
        if kind not in self.KINDS:
            raise ValueError(f"unknown linear readout kind {kind!r}; expected one of {self.KINDS}")
        self.kind, self.seed, self.C = kind, seed, C
        self.coef = self.intercept = self.classes = None

    def fit(self, counts, labels):
        """Fit on counts of shape (n, F, L) or (n, N) and integer labels; returns self."""
        counts = np.asarray(counts)
        x = counts.reshape(len(counts), -1)
        if self.kind == "logistic":
            from scipy import sparse
            from sklearn.linear_model import LogisticRegression

            rows, cols, vals = [], [], []
            for sl in _batches(*x.shape):  # CSR built batch by batch: no dense float copy
                v, b, i = _spikes(x[sl, :, None])
                rows.append(b + sl.start), cols.append(i), vals.append(v)
            x = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=x.shape)
            clf = LogisticRegression(C=self.C, solver="lbfgs", max_iter=1000)
        else:
            from sklearn.linear_model import SGDClassifier

            x = x.astype(np.float64)
            clf = SGDClassifier(random_state=self.seed, n_jobs=-1)
        labels = np.asarray(labels)
        if labels.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {labels.shape}")
        clf.fit(x, labels)
        self.coef, self.intercept, self.classes = clf.coef_.copy(), clf.intercept_.copy(), clf.classes_.copy()
        logger.info("fitted %s readout on %d samples x %d neurons", self.kind, *x.shape)
        return self

    def decision_function(self, counts, batch_size=None):
        """Decision values ``counts @ coef.T + intercept``, shape (n_samples, n_classes) (1 column for 2 classes)."""
        if self.coef is None:
            raise RuntimeError("LinearReadout is not fitted")
        counts = np.asarray(counts)
        x = counts.reshape(len(counts), -1)
        if x.shape[1] != self.coef.shape[1]:
            raise ValueError(f"expected {self.coef.shape[1]} neurons, got {x.shape[1]}")
        out = np.empty((len(x), len(self.intercept)))
        for sl in _batches(*x.shape, batch_size):
            out[sl] = x[sl].astype(np.float64) @ self.coef.T + self.intercept
        return out

    def predict(self, counts):
        """Predicted labels (int64); -1 where a sample has no spike."""
        d = self.decision_function(counts)
        idx = (d[:, 0] > 0).astype(np.int64) if d.shape[1] == 1 else d.argmax(axis=1)
        pred = self.classes[idx].astype(np.int64)
        pred[_no_spike(counts)] = -1
        return pred

    def to_arrays(self):
        """Plain arrays (no pickle, e.g. for ``np.savez``) from which :meth:`from_arrays` rebuilds the readout."""
        if self.coef is None:
            raise RuntimeError("LinearReadout is not fitted")
        return {
            "kind": np.array(self.kind),
            "seed": np.array(self.seed),
            "C": np.array(self.C),
            "coef": self.coef,
            "intercept": self.intercept,
            "classes": self.classes,
        }

    @classmethod
    def from_arrays(cls, arrays):
        """Rebuild a fitted readout from the output of :meth:`to_arrays` (or an ``np.load`` of it)."""
        obj = cls(
            kind=str(np.asarray(arrays["kind"])), seed=int(np.asarray(arrays["seed"])), C=float(np.asarray(arrays["C"]))
        )
        obj.coef, obj.intercept, obj.classes = (np.array(arrays[k]) for k in ("coef", "intercept", "classes"))
        return obj


def evaluate(counts, labels, votes, linear=None, top_n=()):
    """Accuracy of every readout on a labelled test set (section 6.5).

    Parameters
    ----------
    counts : array_like, shape (n_samples, F, L) or (n_samples, F)
    labels : array_like of int, shape (n_samples,)
    votes : array_like, shape (n_classes, F, L)
        Votes from :func:`compute_votes` on the calibration set.
    linear : LinearReadout, optional
        Fitted linear readout, reported as ``"linear"``.
    top_n : iterable of int
        For each n, patch voting with :func:`top_n_votes`, reported as ``"top_<n>"``.

    Returns
    -------
    dict of str to dict
        Per method the :func:`accuracy` dict plus ``"no_spike"`` (number of samples without any Y spike).
    """
    counts = _as3d(counts)
    silent = _no_spike(counts)
    names = list(VOTING_METHODS) + [f"top_{n}" for n in top_n]
    jobs = [(votes, m) for m in VOTING_METHODS] + [(top_n_votes(votes, n), "patch_voting") for n in top_n]
    result = {}
    for name, scores in zip(names, _scores_many(counts, jobs), strict=True):
        result[name] = accuracy(_predict(scores, silent), labels)
    if linear is not None:
        result["linear"] = accuracy(linear.predict(counts), labels)
    for entry in result.values():
        entry["no_spike"] = int(silent.sum())
    logger.info("accuracies: %s", {k: round(e["accuracy"], 4) for k, e in result.items()})
    return result


def best_voting(scores_dict):
    """The best of the three voting rules by accuracy (the thesis's "method 1"; first on ties).

    Returns
    -------
    tuple of (str, dict)
        Method name and its entry of ``scores_dict`` (as returned by :func:`evaluate`).
    """
    present = [m for m in VOTING_METHODS if m in scores_dict]
    if not present:
        raise ValueError(f"none of {VOTING_METHODS} in scores")
    best = max(present, key=lambda m: scores_dict[m]["accuracy"])
    return best, scores_dict[best]


def headline_test_phase(phases):
    """The test phase whose scores stand for the run: the last one (the one rule of every user).

    The learning curve's and the report's figures, the index's ``best_voting`` and ``linear`` columns, a
    sweep's objective without a phase and the showcase all read this phase. The last, because the README's
    tuning protocols calibrate, score a validation phase and then the test phase.

    Parameters
    ----------
    phases : mapping or iterable
        A run's scores.json (test phase name -> methods, in phase order), a protocol's phase list (dicts with
        ``type`` and ``name``: only test phases count) or test phase names.

    Returns
    -------
    str or None
        The phase name; None when there is no test phase.
    """
    if isinstance(phases, dict):
        names = list(phases)
    else:
        names = [p if isinstance(p, str) else p["name"] for p in phases if isinstance(p, str) or p["type"] == "test"]
    return names[-1] if names else None
