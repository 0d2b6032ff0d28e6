"""The input encoders on the runtime device, against their distributions (scipy.stats, fixed seeds).

``input_thesis`` (the default, thesis-spec.md section 1.3): inter-spike intervals max(1, Poisson(1 / (r dt)))
steps, the first spike of a sample at step (first interval - 1). ``input_poisson``: each step a spike with
probability r dt, so geometric intervals and Binomial(steps, r dt) counts. Rate-0 pixels never fire in either.
The goodness-of-fit tests reject at p < 1e-3 (one false alarm in a thousand seeds); the count tolerance is four
standard errors of the mean for the sample size drawn.
"""

from functools import cache

import brian2 as b2
import numpy as np
import pytest
from scipy import stats

from brian_lcsnn.models import load_model
from brian_lcsnn.network import NetworkSpec, build_network
from brian_lcsnn.simulation import Simulator
from brian_lcsnn.topology import Geometry

pytestmark = pytest.mark.runtime

GEOMETRY = Geometry(crop=8, kernel_size=8, stride=1, n_filters=2, architecture="FC")  # 64 pixels
SLOW, FAST = 100.0, 500.0  # Hz: 10 and 2 steps of 1 ms per interval (at 2, Poisson gives 0 in 13.5 %)


def _rates():
    """Pixel 0 silent, pixels 1..31 at SLOW, 32..63 at FAST."""
    rates = np.full(GEOMETRY.n_inputs, SLOW)
    rates[0], rates[32:] = 0.0, FAST
    return rates


@cache  # one simulation per set of arguments in a session (the parametrized tests share it)
def _x_spikes(input_model: str, n_samples: int, steps: int, seed: int):
    """(pixel, sample, step within the sample) of every X spike of one chunk of ``n_samples`` equal samples."""
    spec = NetworkSpec(geometry=GEOMETRY, input=load_model(input_model), neuron=load_model("adaptive_lif"),
                       xy=load_model("stdp_postpre"), normalisation=load_model("normalise_incoming"),
                       yy=load_model("competition_fixed"), samples_per_chunk=n_samples,
                       time_per_sample=steps * b2.ms)  # fmt: skip
    Simulator(spec, device="runtime").prepare()
    b2.start_scope()
    b = build_network(spec)
    b.stimulus.values[:] = np.vstack([np.tile(_rates(), (n_samples, 1)), np.zeros(GEOMETRY.n_inputs)])
    b.learning_schedule.values[:] = 0.0
    b.xy_weights.w[:] = 1.0
    b.norm_target_group.norm_target = 1.0
    for group, name, value in b.runtime_parameters():
        setattr(group, name, value)
    monitor = b2.SpikeMonitor(b.X)
    b.network.add(monitor)
    b2.seed(seed)
    b.network.run(spec.duration, namespace={})
    step = np.rint(np.asarray(monitor.t_[:]) / 1e-3).astype(np.int64)
    return np.asarray(monitor.i[:]), step // steps, step % steps


def _intervals(pixel, sample, step, pixels):
    """Every interval between consecutive spikes of one pixel within one sample, in steps."""
    out = []
    for p in pixels:
        for s in np.unique(sample):
            out.append(np.diff(np.sort(step[(pixel == p) & (sample == s)])))
    return np.concatenate(out)


def _merge(observed, expected):
    """Adjacent bins merged until each expects at least 5 (the chi-square rule of thumb), the rest into the last."""
    obs, exp, o, e = [], [], 0.0, 0.0
    for oi, ei in zip(observed, expected, strict=True):
        o, e = o + oi, e + ei
        if e >= 5:
            obs.append(o), exp.append(e)
            o, e = 0.0, 0.0
    obs[-1], exp[-1] = obs[-1] + o, exp[-1] + e
    return np.array(obs), np.array(exp) * sum(obs) / sum(exp)  # the float residue of the cut tails


def _chisquare_p(values, pmf, k_max):
    """p-value of the values (integers >= 1) against ``pmf(k)``, k = 1..k_max-1 and the tail >= k_max."""
    k = np.arange(1, k_max)
    probs = np.append(pmf(k), 1.0 - pmf(k).sum())
    observed = np.bincount(np.minimum(values, k_max) - 1, minlength=k_max)[:k_max].astype(float)
    return stats.chisquare(*_merge(observed, probs * len(values))).pvalue


def _thesis_pmf(lam):
    """max(1, Poisson(lam)): the 0s become 1s."""

    def pmf(k):
        p = stats.poisson.pmf(k, lam)
        return np.where(k == 1, p + stats.poisson.pmf(0, lam), p)

    return pmf


@pytest.mark.parametrize(("rate", "pixels"), [(SLOW, range(1, 32)), (FAST, range(32, 64))])
def test_thesis_intervals_are_integer_poisson_with_zero_as_one(rate, pixels):
    pixel, sample, step = _x_spikes("input_thesis", 1, 2000, seed=11)
    assert not np.any(pixel == 0)  # rate 0: silent
    intervals = _intervals(pixel, sample, step, pixels)
    lam = 1 / (rate * 1e-3)
    assert len(intervals) > 0.9 * len(pixels) * 2000 / lam
    mean = lam + np.exp(-lam)  # E[max(1, N)] = E[N] + P(N = 0)
    sd = np.sqrt(lam + np.exp(-lam) - 2 * lam * np.exp(-lam) - np.exp(-2 * lam))  # E[M^2] = lam + lam^2 + P(N=0)
    assert abs(intervals.mean() - mean) < 4 * sd / np.sqrt(len(intervals))
    assert _chisquare_p(intervals, _thesis_pmf(lam), 30) > 1e-3
    assert intervals.min() >= 1  # two spikes never share a step


def test_thesis_first_spike_of_each_sample_is_the_first_interval_minus_one():
    pixel, sample, step = _x_spikes("input_thesis", 20, 40, seed=12)  # sample_start draws a fresh first interval
    assert not np.any(pixel == 0)
    for rate, pixels in ((SLOW, range(1, 32)), (FAST, range(32, 64))):
        first = np.array([step[(pixel == p) & (sample == s)].min() for p in pixels for s in range(20)])
        assert _chisquare_p(first + 1, _thesis_pmf(1 / (rate * 1e-3)), 25) > 1e-3


@pytest.mark.parametrize(("rate", "pixels"), [(SLOW, range(1, 32)), (FAST, range(32, 64))])
def test_poisson_counts_are_binomial_and_intervals_geometric(rate, pixels):
    steps, n_samples = 500, 4
    pixel, sample, step = _x_spikes("input_poisson", n_samples, steps, seed=13)
    assert not np.any(pixel == 0)
    p = rate * 1e-3
    counts = np.array([np.sum((pixel == q) & (sample == s)) for q in pixels for s in range(n_samples)])
    assert abs(counts.mean() - steps * p) < 4 * np.sqrt(steps * p * (1 - p) / len(counts))
    assert stats.chisquare(*_binned(counts, stats.binom(steps, p))).pvalue > 1e-3
    intervals = _intervals(pixel, sample, step, pixels)
    assert _chisquare_p(intervals, stats.geom(p).pmf, 40) > 1e-3


def _binned(values, dist):
    """Observed and expected counts of integer values, over the central 1 - 2e-9 of dist."""
    k = np.arange(int(dist.ppf(1e-9)), int(dist.ppf(1 - 1e-9)) + 1)
    return _merge(np.array([np.sum(values == x) for x in k], dtype=float), dist.pmf(k) * len(values))
