"""The permutohedral lattice (Adams, Baek and Davis, Eurographics 2010) in torch: a Gaussian
filter over N points in a d-dimensional feature space in O(N d^2) instead of O(N^2), the
filter behind the fully connected CRF (Kraehenbuehl and Koltun 2011) and pydensecrf.

Each point is lifted onto the hyperplane of R^(d+1) whose coordinates sum to zero, tiled by
simplices; its value is splatted onto the d+1 vertices of its simplex with barycentric weights,
blurred with [1/2, 1, 1/2] along each of the d+1 lattice directions, and sliced back with the
same weights. Features are in units of the Gaussian's standard deviation, as pydensecrf scales
them (position / sxy, colour / srgb), so the result approximates
    out_i = sum_j exp(-|f_i - f_j|^2 / 2) * in_j      (j = i included),
with pydensecrf's lattice scale, vertex rounding, blur order and final constant, so that the
two filters agree to float rounding. Everything is tensor ops: CPU and CUDA run the same code.
"""
from __future__ import annotations

import math
import warnings

import torch


class _LatticeFilter:
    """Splat, blur and slice over built lattice vertices (PermutohedralLattice, LatticeStack):
    `vertex_of` (N, d+1) and `weights` (N, d+1) give each point's simplex vertices and barycentric
    weights, `neighbours` each vertex's two neighbours along each direction (`size`: none)."""

    size: int
    alpha: float
    vertex_of: torch.Tensor
    weights: torch.Tensor
    neighbours: list[tuple[torch.Tensor, torch.Tensor]]

    splat_order: torch.Tensor  # the (point, vertex) pairs, flattened, in the order of vertex, then point
    _splat: torch.Tensor | None = None

    def _sparse_maps(self) -> None:
        """Splat and slice as sparse matrices ((M+1) x N and N x (M+1), CSR): one sparse product
        each instead of a scatter and a gather, several times faster on CPU and GPU. Built when
        first needed (a lattice in a LatticeStack never needs its own)."""
        n, k = self.weights.shape
        splat_order = self.splat_order
        counts = torch.bincount(self.vertex_of.reshape(-1), minlength=self.size + 1)
        splat_rows = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        columns, order = self.vertex_of.sort(1)  # CSR wants each row's columns in order
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            self._splat = torch.sparse_csr_tensor(splat_rows, splat_order // k, self.weights.reshape(-1)[splat_order],
                                                  size=(self.size + 1, n))
            self._slice = torch.sparse_csr_tensor(torch.arange(0, n * k + 1, k, device=columns.device), columns.reshape(-1),
                                                  (self.weights.gather(1, order) * self.alpha).reshape(-1), size=(n, self.size + 1))

    def normalise(self, scale: float = 1.0) -> None:
        """Make `filter` the CRF's symmetrically normalised kernel times `scale`:
        scale * D K D with D = diag(1 / sqrt(K 1)), folded into the splat and slice matrices."""
        norm = self.filter(self.weights.new_ones(len(self.weights), 1))[:, 0].add(1e-20).rsqrt()  # builds the maps
        n = len(norm)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            splat, slice_ = self._splat, self._slice
            self._splat = torch.sparse_csr_tensor(splat.crow_indices(), splat.col_indices(),
                                                  splat.values() * norm[splat.col_indices()], size=splat.shape)
            rows = torch.repeat_interleave(torch.arange(n, device=norm.device), slice_.crow_indices().diff())
            self._slice = torch.sparse_csr_tensor(slice_.crow_indices(), slice_.col_indices(),
                                                  slice_.values() * (scale * norm)[rows], size=slice_.shape)

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """Values (N, C) -> the Gaussian-filtered values (N, C), each point's own value included."""
        if self._splat is None:
            self._sparse_maps()
        lattice = self._splat @ values  # (M+1, C); row M, the missing neighbour, stays zero
        spare = torch.zeros_like(lattice)
        for minus, plus in self.neighbours:
            torch.add(lattice.index_select(0, minus), lattice.index_select(0, plus), out=spare[: self.size])
            spare[: self.size].mul_(0.5).add_(lattice[: self.size])
            lattice, spare = spare, lattice
        return self._slice @ lattice


class PermutohedralLattice(_LatticeFilter):
    """The lattice of a point set: build once per image, then `filter` any number of value maps."""

    def __init__(self, features: torch.Tensor):
        """`features` (N, d): each point's position in units of the kernel's standard deviation."""
        n, d = features.shape
        device, self.d = features.device, d
        features = features.float()  # float32 throughout, as pydensecrf: the same points round to the same simplices
        # Lift onto the hyperplane: elevated[0] = sum of the scaled features, elevated[j] = (sum of
        # scaled features j..d-1) - j * scaled feature j-1 (Adams et al., p. 5, pydensecrf's scale).
        ranks = torch.arange(1, d + 2, device=device, dtype=torch.float32)
        scale = math.sqrt(2 / 3) * (d + 1) / torch.sqrt(ranks[:-1] * ranks[1:])
        scaled = features * scale
        suffix = torch.cat([scaled.flip(1).cumsum(1).flip(1), scaled.new_zeros(n, 1)], 1)  # (N, d+1)
        elevated = torch.cat([suffix[:, :1], suffix[:, 1:] - ranks[:-1] * scaled], 1)
        # The nearest remainder-0 lattice point (coordinates multiples of d+1), then each
        # coordinate's rank in the sorted residuals (ties: the later coordinate ranks higher).
        down = torch.floor(elevated / (d + 1)) * (d + 1)
        up = down + (d + 1)
        rem0 = torch.where(up - elevated < elevated - down, up, down).long()
        residual = elevated - rem0
        # rank i: how many coordinates come before i in the residuals' descending order, ties
        # broken by position (pydensecrf's pairwise count)
        order = torch.sort(-residual, dim=1, stable=True).indices
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(d + 1, device=device).expand(n, -1))
        # Back onto the plane where the rounding left it off.
        rank = rank + rem0.sum(1, keepdim=True) // (d + 1)
        below, above = rank < 0, rank > d
        rank = rank + (d + 1) * below - (d + 1) * above
        rem0 = rem0 + (d + 1) * below - (d + 1) * above
        # Barycentric weights of the d+1 vertices (Adams et al., p. 10).
        v = (elevated - rem0) / (d + 1)
        bary = torch.zeros(n, d + 2, device=device)
        bary.scatter_add_(1, d - rank, v).scatter_add_(1, d - rank + 1, -v)
        bary[:, 0] += 1 + bary[:, d + 1]
        self.weights = bary[:, : d + 1]  # (N, d+1)
        # Vertex r of a point's simplex has the coordinates rem0_i + r, less d+1 where rank_i > d - r
        # (the canonical simplex, reordered by rank); a vertex is keyed by its first d coordinates
        # (they sum to zero), packed into one integer.
        self._low = rem0[:, :d].amin(0) - (d + 1)
        self._span = rem0[:, :d].amax(0) + (d + 1) - self._low + 1
        if float(torch.prod(self._span.double())) >= 2.0**62:
            raise ValueError("the lattice's key space does not fit 64 bits: filter fewer points at a time")
        self._radix = torch.cat([torch.ones(1, dtype=torch.long, device=device), torch.cumprod(self._span[:-1], 0)])
        base = self._pack(rem0[:, :d])
        codes = torch.stack([base + r * self._radix.sum() - (d + 1) * ((rank[:, :d] > d - r).long() * self._radix).sum(1)
                             for r in range(d + 1)], 1)
        # one sort gives the vertices (the distinct codes), each point's vertex ids and the splat's order
        sorted_codes, self.splat_order = torch.sort(codes.reshape(-1), stable=True)
        new_vertex = torch.cat([sorted_codes.new_ones(1, dtype=torch.bool), sorted_codes[1:] != sorted_codes[:-1]])
        codes = sorted_codes[new_vertex]
        self.size = len(codes)
        self.vertex_of = torch.empty_like(self.splat_order).scatter_(0, self.splat_order, new_vertex.cumsum(0) - 1).reshape(n, d + 1)
        vertex_keys = (codes[:, None] // self._radix) % self._span + self._low  # (M, d)
        # Each vertex's two neighbours along each of the d+1 lattice directions.
        self.neighbours = []
        for j in range(d + 1):
            minus, plus = vertex_keys - 1, vertex_keys + 1
            if j < d:
                minus[:, j], plus[:, j] = vertex_keys[:, j] + d, vertex_keys[:, j] - d
            self.neighbours.append((self._find(codes, minus), self._find(codes, plus)))
        self.alpha = 1 / (1 + 2.0**-d)  # pydensecrf's constant (Adams's normalisation of the blur)

    def _pack(self, keys: torch.Tensor) -> torch.Tensor:
        return ((keys - self._low) * self._radix).sum(-1)

    def _find(self, codes: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Index of each key among the vertices, or `size` where it is not one."""
        inside = ((keys >= self._low) & (keys < self._low + self._span)).all(1)
        packed = self._pack(keys.clamp(self._low, self._low + self._span - 1))
        index = torch.searchsorted(codes, packed).clamp_max(len(codes) - 1)
        return torch.where(inside & (codes[index] == packed), index, len(codes))


class LatticeStack(_LatticeFilter):
    """Several lattices (one per image) filtered as one: the images' points one after another."""

    def __init__(self, lattices: list[PermutohedralLattice]):
        starts = [0]
        for lattice in lattices:
            starts.append(starts[-1] + lattice.size)
        self.size, self.alpha = starts[-1], lattices[0].alpha
        self.weights = torch.cat([lattice.weights for lattice in lattices])
        self.vertex_of = torch.cat([lattice.vertex_of + start for lattice, start in zip(lattices, starts)])
        pairs = [0]
        for lattice in lattices:
            pairs.append(pairs[-1] + lattice.splat_order.numel())
        self.splat_order = torch.cat([lattice.splat_order + first for lattice, first in zip(lattices, pairs)])

        def shifted(index: torch.Tensor, lattice: PermutohedralLattice, start: int) -> torch.Tensor:
            return torch.where(index == lattice.size, self.size, index + start)

        self.neighbours = [
            tuple(torch.cat([shifted(lattice.neighbours[j][side], lattice, start) for lattice, start in zip(lattices, starts)])
                  for side in (0, 1))
            for j in range(lattices[0].d + 1)
        ]
