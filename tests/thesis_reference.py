"""The thesis's LC_SNN step in plain numpy, written from thesis-spec.md sections 2.2, 2.3, 3.2, 3.3, 4.1.

An independent statement of the semantics that the Brian2 build must reproduce: dense matrices, one loop
over time steps, BindsNET's order. Used only by the tests.
"""

import numpy as np

from brian_lcsnn.topology import competition_pairs, kernel_index, local_pairs


def regular_spikes(rates_hz: np.ndarray, steps: int) -> np.ndarray:
    """The deterministic encoder of models/input_regular.yaml: every round(1/(r dt)) steps, first at that - 1."""
    spikes = np.zeros((steps, rates_hz.size), dtype=bool)
    for k, rate in enumerate(rates_hz):
        if rate > 0:
            isi = max(int(np.floor(1.0 / (rate * 0.001) + 0.5)), 1)  # C's round: half away from zero
            spikes[isi - 1 :: isi, k] = True
    return spikes


def simulate(geometry, rates, learning, xy_w, yy_w, theta, *, norm_target, refractory_steps=2, wmax=1.0,
             steps=250, normalise=True):  # fmt: skip
    """Run samples one after the other; returns (counts, xy_w, theta) with xy_w in synapse (pre-major) order.

    For a C network (``geometry.architecture == "C"``) ``xy_w`` holds the kernels (F * k * k), the update of a
    kernel entry in a step is the sum of the PostPre updates of every synapse that uses it, then one clamp
    (the thesis's conv rule), and the normalisation is per kernel; the kernels are returned.
    """
    i, j = local_pairs(geometry)
    conv = geometry.architecture == "C"
    if conv:
        kidx = kernel_index(geometry)
        kernels = np.asarray(xy_w, dtype=float).copy()
        xy_w = kernels[kidx]
    yi, yj = competition_pairs(geometry)
    W = np.zeros((geometry.n_inputs, geometry.n_neurons))
    W[i, j] = xy_w
    mask = np.zeros_like(W, dtype=bool)
    mask[i, j] = True
    C = np.zeros((geometry.n_neurons, geometry.n_neurons))
    C[yi, yj] = yy_w
    theta = theta.copy()  # mV
    decay_v, decay_x, decay_y = np.exp(-1 / 20), np.exp(-1 / 20), np.exp(-1 / 20)
    decay_theta = np.exp(-1 / 1e6)
    counts = np.zeros((len(rates), geometry.n_neurons), dtype=int)

    def normalised(W):
        if not normalise:
            return W
        if conv:
            k2 = geometry.kernel_size**2
            per_channel = kernels.reshape(geometry.n_filters, k2)
            kernels[:] = (per_channel * norm_target / per_channel.sum(axis=1, keepdims=True)).ravel()
            W = np.zeros_like(W)
            W[i, j] = kernels[kidx]
            return W
        return W * norm_target / W.sum(axis=0)

    W = normalised(W)  # at creation
    for n, (sample_rates, learn) in enumerate(zip(rates, learning, strict=True)):
        x_spikes = regular_spikes(sample_rates, steps)
        v = np.full(geometry.n_neurons, -65.0)
        refrac = np.zeros(geometry.n_neurons, dtype=int)
        x_src = np.zeros(geometry.n_inputs)
        x_tgt = np.zeros(geometry.n_neurons)
        inp = np.zeros(geometry.n_neurons)
        for t in range(steps):
            s_x = x_spikes[t]
            x_src = x_src * decay_x
            x_src[s_x] = 1.0
            v = -65.0 + (v + 65.0) * decay_v
            if learn:
                theta = theta * decay_theta
            v = v + (refrac == 0) * inp
            refrac = (refrac > 0) * (refrac - 1)
            s_y = v >= -52.0 + theta
            refrac[s_y] = refractory_steps
            v[s_y] = -65.0
            if learn:
                theta = theta + 0.05 * s_y
            x_tgt = x_tgt * decay_y
            x_tgt[s_y] = 1.0
            counts[n] += s_y
            if learn and conv:
                dW = -1e-4 * np.outer(s_x, x_tgt) + 1e-2 * np.outer(x_src, s_y)
                kernels[:] = np.clip(kernels + np.bincount(kidx, weights=dW[i, j], minlength=len(kernels)), 0, wmax)
                W[i, j] = kernels[kidx]
            elif learn:
                W = W - 1e-4 * np.outer(s_x, x_tgt) + 1e-2 * np.outer(x_src, s_y)
                W = np.clip(W, 0, wmax) * mask
            inp = s_x @ W + s_y @ C
        W = normalised(W)
    return counts, (kernels if conv else W[i, j]), theta
