"""Network geometry as pure functions: locations, index conditions for ``Synapses.connect``, sizes.

No Brian2 objects here, so that geometry is unit-tested in milliseconds. Conventions (as the thesis):
input neuron ``i = row * crop + col``; Y neuron ``j = f * n_locations + loc`` with
``loc = loc_row * side + loc_col`` (channel-major), so ``j % n_locations`` is the location.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LcsnnError

__all__ = [
    "ARCHITECTURES",
    "YY_PAIRS",
    "GeometryError",
    "Geometry",
    "local_pairs",
    "kernel_index",
    "competition_pairs",
    "competing",
]

#: LC: locally connected (own weights at every location); C: convolution (one kernel per channel, shared by
#: every location); FC: fully connected (one location whose receptive field is the whole crop).
ARCHITECTURES = ("LC", "C", "FC")
YY_PAIRS = ("competition", "all")


class GeometryError(LcsnnError, ValueError):
    """An impossible geometry (kernel larger than the crop, zero stride, ...)."""


@dataclass(frozen=True)
class Geometry:
    """Sizes of the X -> Y projection of a locally connected network.

    Parameters
    ----------
    crop : int
        Side of the (square) input crop; ``crop**2`` input neurons.
    kernel_size : int
        Side of each Y neuron's receptive field.
    stride : int
        Step between neighbouring receptive fields.
    n_filters : int
        Channels per location.
    architecture : str
        ``"LC"``, ``"C"`` or ``"FC"`` (``kernel_size`` must then equal ``crop``).
    yy_pairs : str
        ``"competition"``: YY synapses between different channels at the same location (default);
        ``"all"``: every ordered Y pair, self included, as the thesis code's dense YY matrix (learned
        competition then acts across receptive fields within a sample; see `network`).
    """

    crop: int
    kernel_size: int
    stride: int
    n_filters: int
    architecture: str = "LC"
    yy_pairs: str = "competition"

    def __post_init__(self):
        for name in ("crop", "kernel_size", "stride", "n_filters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise GeometryError(f"{name} must be a positive integer, got {value!r}")
        if self.architecture not in ARCHITECTURES:
            raise GeometryError(f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}")
        if self.yy_pairs not in YY_PAIRS:
            raise GeometryError(f"yy_pairs must be one of {', '.join(YY_PAIRS)}, got {self.yy_pairs!r}")
        if self.kernel_size > self.crop:
            raise GeometryError(f"kernel_size {self.kernel_size} is larger than the crop {self.crop}")
        if self.architecture == "FC" and self.kernel_size != self.crop:
            raise GeometryError(
                f"an FC network sees the whole crop: kernel_size must be {self.crop}, got {self.kernel_size}"
            )

    @property
    def side(self) -> int:
        """Locations per row: ``(crop - kernel_size) // stride + 1`` (the thesis's conv_size)."""
        return (self.crop - self.kernel_size) // self.stride + 1

    @property
    def n_locations(self) -> int:
        return self.side**2

    @property
    def n_inputs(self) -> int:
        return self.crop**2

    @property
    def n_neurons(self) -> int:
        return self.n_filters * self.n_locations

    @property
    def n_xy(self) -> int:
        """XY synapses: every Y neuron sees kernel_size**2 inputs."""
        return self.n_neurons * self.kernel_size**2

    @property
    def n_competing(self) -> int:
        """Ordered pairs of different channels at the same location (the competition proper)."""
        return self.n_locations * self.n_filters * (self.n_filters - 1)

    @property
    def n_yy(self) -> int:
        """YY synapses: the competing pairs, or every ordered pair with ``yy_pairs="all"``."""
        return self.n_competing if self.yy_pairs == "competition" else self.n_neurons**2

    @property
    def n_xy_parameters(self) -> int:
        """Learnable XY weights: one per synapse (LC, FC), one kernel of k x k per channel (C)."""
        return self.n_filters * self.kernel_size**2 if self.architecture == "C" else self.n_xy

    def kernel_index_expression(self) -> str:
        """For synapse (i, j): its entry in the kernels, ``f * k^2 + (row - row0) * k + (col - col0)``."""
        c, s, k, n, L = self.crop, self.stride, self.kernel_size, self.side, self.n_locations
        row = f"((i // {c}) - ((j % {L}) // {n}) * {s})"
        col = f"((i % {c}) - ((j % {L}) % {n}) * {s})"
        return f"(j // {L}) * {k * k} + {row} * {k} + {col}"

    def sizes(self) -> dict[str, int]:
        """The size report: neurons, synapses and learnable parameters."""
        return {
            "x_neurons": self.n_inputs,
            "y_neurons": self.n_neurons,
            "locations": self.n_locations,
            "xy_synapses": self.n_xy,
            "xy_parameters": self.n_xy_parameters,
            "yy_synapses": self.n_yy,
            "total_parameters": self.n_xy_parameters + self.n_competing,
        }

    def xy_condition(self) -> str:
        """The receptive-field test as an index condition for ``Synapses(X, Y).connect(condition=...)``."""
        c, s, k, n, L = self.crop, self.stride, self.kernel_size, self.side, self.n_locations
        row_start = f"((j % {L}) // {n}) * {s}"
        col_start = f"((j % {L}) % {n}) * {s}"
        return (
            f"(i // {c}) >= {row_start} and (i // {c}) < {row_start} + {k} and "
            f"(i % {c}) >= {col_start} and (i % {c}) < {col_start} + {k}"
        )

    def competing_condition(self) -> str:
        """Different channels at the same location."""
        return f"i % {self.n_locations} == j % {self.n_locations} and i != j"

    def yy_condition(self) -> str:
        """The index condition of the YY synapses."""
        return self.competing_condition() if self.yy_pairs == "competition" else "True"

    def yy_connect(self) -> dict[str, str]:
        """``Synapses(Y, Y).connect(**...)`` for the YY synapses: the pairs of `yy_condition`, pre-major and in
        the same order, but the competing ones made by a generator (the F - 1 other channels at i's location),
        not by testing every one of the n_neurons^2 pairs in every run of a chunk."""
        if self.yy_pairs != "competition":
            return {"condition": self.yy_condition()}
        L, F = self.n_locations, self.n_filters
        return {"j": f"i % {L} + k * {L} for k in range({F}) if k != i // {L}"}


def local_pairs(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """All XY (pre, post) index pairs, pre-major as ``connect(condition=...)`` creates them."""
    n, s, k, c = geometry.side, geometry.stride, geometry.kernel_size, geometry.crop
    post = np.arange(geometry.n_neurons)
    loc = post % geometry.n_locations
    row0, col0 = (loc // n) * s, (loc % n) * s
    pre = np.arange(geometry.n_inputs)
    r, q = pre[:, None] // c, pre[:, None] % c
    inside = (r >= row0) & (r < row0 + k) & (q >= col0) & (q < col0 + k)
    i, j = np.nonzero(inside)
    return i.astype(np.int32), j.astype(np.int32)


def kernel_index(geometry: Geometry) -> np.ndarray:
    """The kernel entry of every XY synapse, in `local_pairs` order (numpy twin of kernel_index_expression)."""
    i, j = local_pairs(geometry)
    k, c, s, n, L = geometry.kernel_size, geometry.crop, geometry.stride, geometry.side, geometry.n_locations
    loc = j % L
    return ((j // L) * k * k + (i // c - (loc // n) * s) * k + (i % c - (loc % n) * s)).astype(np.int32)


def competition_pairs(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """All YY (pre, post) index pairs, pre-major."""
    idx = np.arange(geometry.n_neurons)
    if geometry.yy_pairs == "all":
        return np.repeat(idx, len(idx)).astype(np.int32), np.tile(idx, len(idx)).astype(np.int32)
    i, j = np.nonzero(competing(geometry, idx[:, None], idx[None, :]))
    return i.astype(np.int32), j.astype(np.int32)


def competing(geometry: Geometry, i, j):
    """Whether Y neurons i and j compete (different channels at the same location); numpy-broadcasting."""
    L = geometry.n_locations
    return (np.asarray(i) % L == np.asarray(j) % L) & (np.asarray(i) != np.asarray(j))
