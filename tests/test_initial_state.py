"""runner.initial_state: XY uniform in [0, 1), YY c_w (constant) or uniform between c_w and 0 on the competing
pairs only, theta 0; one seed, one state."""

import numpy as np
import pytest
from scipy import stats

from brian_lcsnn.protocol import load_protocol
from brian_lcsnn.runner import initial_state
from brian_lcsnn.topology import competing, competition_pairs

from .conftest import TINY_RUN

pytestmark = pytest.mark.codegen_independent


def _state(*overrides, entropy=3):
    protocol = load_protocol(TINY_RUN, ("network.c_w=-40", *overrides))
    return protocol.geometry, initial_state(protocol, np.random.SeedSequence(entropy))


@pytest.mark.parametrize("pairs", ["competition", "all"])
def test_uniform_yy_is_uniform_between_c_w_and_0_on_competing_pairs_only(pairs):
    g, state = _state("network.yy_init=uniform", f"network.yy_pairs={pairs}")
    i, j = competition_pairs(g)
    assert len(state.yy_w) == len(i) == g.n_yy
    rival = competing(g, i, j)
    assert rival.sum() == g.n_neurons * (g.n_filters - 1)  # 225 x 24, whatever the pairs built
    assert np.all(state.yy_w[~rival] == 0.0)  # with "all": self and cross-location pairs start silent
    w = state.yy_w[rival]
    assert np.all((w > -40) & (w <= 0)) and len(np.unique(w)) == len(w)
    # Kolmogorov-Smirnov against U(-40, 0): 5400 draws, rejected at p < 1e-3 one seed in a thousand
    assert stats.kstest(w, stats.uniform(loc=-40, scale=40).cdf).pvalue > 1e-3
    assert abs(w.mean() + 20) < 4 * 40 / np.sqrt(12 * len(w))  # 4 standard errors of the mean
    assert stats.kstest(state.xy_w, "uniform").pvalue > 1e-3 and np.all(state.theta == 0)


def test_constant_yy_is_c_w_on_competing_pairs_only():
    g, state = _state("network.yy_pairs=all")
    rival = competing(g, *competition_pairs(g))
    assert np.all(state.yy_w[rival] == -40.0) and np.all(state.yy_w[~rival] == 0.0)


def test_one_seed_one_initial_state():
    _, a = _state("network.yy_init=uniform")
    _, b = _state("network.yy_init=uniform")
    _, c = _state("network.yy_init=uniform", entropy=4)
    for name in ("xy_w", "yy_w", "theta"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.yy_w, c.yy_w) and not np.array_equal(a.xy_w, c.xy_w)
