"""Exact k-nearest-neighbour and radius search in batched, padded 3D point clouds.

Two exact methods, selected by ``method``:

* ``"brute"``: chunked brute force. Squared distances of a chunk of queries to all points by one matrix
  product (points are centred first, and the selected distances are recomputed from coordinate differences,
  so float32 keeps full precision), then ``topk``. O(Q N) work, the right choice on a GPU or for small clouds.
* ``"grid"``: a hashed voxel grid, sub-quadratic on the CPU. Points are sorted by the key of their cell (side
  h); a query gathers the points of the 27 cells around its own and keeps the k closest. Every point within
  h of the query lies in those cells, so the answer is exact whenever the k-th candidate is within h.
  Queries that are not settled at one level are retried with h doubled, up to ``max_distance`` (at that level
  everything within ``max_distance`` has been seen) or, without a distance bound, until brute force over
  the few remaining queries is cheaper. The first h is the typical k-th neighbour distance, measured on a
  sample of the points, so a level gathers a few k candidates per query on a surface scan.

Both return the same neighbours (ties between exactly equidistant points may be broken differently).

:class:`NeighborIndex` keeps the sorted grids of a fixed cloud between calls (ICP queries the same target
every iteration). Neighbour search has no gradient; indices are integers. Distances are recomputed
differentiably from the coordinates when the inputs require gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.registration.pointcloud import clean_points

METHODS = ("auto", "brute", "grid")
_MAX_CELLS = 1 << 25  # dense cell table entries per grid (int32: 128 MiB)
_OFFSETS9 = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)])


class Neighbors(NamedTuple):
    """k nearest neighbours, sorted by distance.

    Attributes:
        indices: (*B, Q, k) int64 row indices into the points' N axis; 0 where not valid.
        distances: (*B, Q, k) Euclidean distances (metres); +inf where not valid.
        valid: (*B, Q, k) bool; False where the cloud has fewer than k points, the neighbour is farther than
            ``max_distance``, or the query itself is masked out.
    """

    indices: Tensor
    distances: Tensor
    valid: Tensor


class _Grid(NamedTuple):
    h: float
    origin: Tensor  # (B, 3) per-cloud minimum corner
    dims: Tensor  # (3,) cells per axis (+ margins), int64
    cstart: Tensor  # (cells + 1,) first row (in key order) of every cell, dense table
    rows: Tensor  # (P,) their row index in the cloud (N axis)
    xs: Tensor  # (P, 3) their coordinates, in key order


class NeighborIndex:
    """Search structure over a fixed padded cloud ``points (B, N, 3)`` for repeated :meth:`knn` queries.

    Args:
        points: (*B, N, 3) points, metres.
        mask: optional (*B, N) bool; False (and NaN) rows are never returned.
        method: ``"auto"`` (grid on the CPU for large clouds, brute force otherwise), ``"brute"`` or ``"grid"``.
        chunk_elements: memory bound, number of query-candidate pairs held at once.
    """

    def __init__(self, points: Tensor, mask: Tensor | None = None, method: str = "auto",
                 chunk_elements: int = 1 << 22):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        cl = clean_points(points, mask)
        self.lead = points.shape[:-2]
        self.n = points.shape[-2]
        self.points = cl.points.reshape(-1, self.n, 3)
        self.mask = cl.mask.reshape(-1, self.n)
        self.B = self.points.shape[0]
        self.chunk = int(chunk_elements)
        if method == "auto":
            method = "grid" if (points.device.type == "cpu" and self.n > 2048) else "brute"
        self.method = method
        self._grids: dict[float, _Grid | None] = {}
        self._flat = None
        self._h0: dict[int, float] = {}
        # centre per cloud for well-conditioned brute-force distances
        w = self.mask.to(self.points.dtype)
        self.center = (w[..., None] * self.points).sum(1) / w.sum(1, keepdim=True).clamp_min(1)

    # ------------------------------------------------------------------ brute force
    def _brute(self, q: Tensor, qb: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """q (Q, 3) with cloud ids qb (Q,) -> (Q, k) squared distances (inf = none) and flat-free indices."""
        Q = q.shape[0]
        P = self.points - self.center[:, None]
        d2_out = q.new_full((Q, k), math.inf)
        i_out = torch.zeros(Q, k, dtype=torch.long, device=q.device)
        if Q == 0 or self.n == 0:
            return d2_out, i_out
        pn = (P * P).sum(-1)
        step = max(1, self.chunk // max(self.n, 1))
        kk = min(k, self.n)
        for s in range(0, Q, step):
            b = qb[s:s + step]
            qc = q[s:s + step] - self.center[b]
            d2 = (qc * qc).sum(-1, keepdim=True) + pn[b] - 2.0 * torch.einsum("qd,qnd->qn", qc, P[b])
            d2 = torch.where(self.mask[b], d2.clamp_min(0), torch.full_like(d2, math.inf))
            vals, idx = torch.topk(d2, kk, dim=-1, largest=False, sorted=True)
            # exact distances of the selected rows
            diff = P[b[:, None], idx] - qc[:, None]
            exact = (diff * diff).sum(-1)
            exact = torch.where(torch.isinf(vals), vals, exact)
            exact, order = torch.sort(exact, dim=-1)
            d2_out[s:s + step, :kk] = exact
            i_out[s:s + step, :kk] = torch.gather(idx, 1, order)
        return d2_out, i_out

    def _brute_padded(self, q: Tensor, qm: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """q (B, Q, 3), qm (B, Q) -> (B, Q, k) squared distances (inf = none) and indices."""
        B, Q = q.shape[:2]
        P = self.points - self.center[:, None]
        d2_out = q.new_full((B, Q, k), math.inf)
        i_out = torch.zeros(B, Q, k, dtype=torch.long, device=q.device)
        if Q == 0 or self.n == 0 or B == 0:
            return d2_out, i_out
        pn = (P * P).sum(-1)[:, None, :]
        inf = torch.full((), math.inf, dtype=q.dtype, device=q.device)
        step = max(1, self.chunk // max(self.n * B, 1))
        kk = min(k, self.n)
        Pt = P.transpose(1, 2)
        for s in range(0, Q, step):
            qc = q[:, s:s + step] - self.center[:, None]
            d2 = torch.baddbmm(pn, qc, Pt, alpha=-2.0).add_((qc * qc).sum(-1, keepdim=True)).clamp_min_(0)
            d2 = torch.where(self.mask[:, None, :], d2, inf)
            vals, idx = torch.topk(d2, kk, dim=-1, largest=False, sorted=True)
            nb = torch.gather(P, 1, idx.reshape(B, -1, 1).expand(-1, -1, 3)).reshape(B, -1, kk, 3)
            exact = ((nb - qc[:, :, None]) ** 2).sum(-1)
            exact = torch.where(torch.isinf(vals), vals, exact)
            exact, order = torch.sort(exact, dim=-1)
            exact = torch.where(qm[:, s:s + step, None], exact, inf)
            d2_out[:, s:s + step, :kk] = exact
            i_out[:, s:s + step, :kk] = torch.gather(idx, 2, order)
        return d2_out, i_out

    # ------------------------------------------------------------------ grid
    def _flat_points(self):
        if self._flat is None:
            b, i = torch.nonzero(self.mask, as_tuple=True)
            self._flat = (b, i, self.points[b, i])
        return self._flat

    def _grid(self, h: float) -> _Grid | None:
        if h in self._grids:
            return self._grids[h]
        pb, pi, x = self._flat_points()
        dev = x.device
        big = torch.finfo(x.dtype).max
        lo = torch.full((self.B, 3), big, dtype=x.dtype, device=dev)
        lo = lo.scatter_reduce(0, pb[:, None].expand(-1, 3), x, "amin")
        hi = torch.full((self.B, 3), -big, dtype=x.dtype, device=dev)
        hi = hi.scatter_reduce(0, pb[:, None].expand(-1, 3), x, "amax")
        empty = lo > hi
        lo = torch.where(empty, torch.zeros_like(lo), lo)
        hi = torch.where(empty, torch.zeros_like(hi), hi)
        ext = (hi - lo).amax(0) if self.B else torch.zeros(3, dtype=x.dtype, device=dev)
        dims = (torch.floor(ext / h).long() + 5)  # raw cells -2 .. n + 2, shifted by +2
        cells = int(dims.prod()) * max(self.B, 1)
        if cells > _MAX_CELLS:  # the dense cell table would be too large: the caller coarsens h
            self._grids[h] = None
            return None
        cell = torch.floor((x - lo[pb]) / h).long() + 2
        key = ((pb * dims[0] + cell[:, 0]) * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        skey, perm = torch.sort(key)
        # cstart[c] = first sorted row of cell c, cstart[c + 1] = one past its last row
        idx_dtype = torch.int32 if skey.numel() < 2 ** 31 - 1 else torch.long
        cstart = torch.zeros(cells + 1, dtype=torch.long, device=dev)
        cstart[1:] = torch.cumsum(torch.bincount(skey, minlength=cells), 0)
        g = _Grid(h, lo, dims, cstart.to(idx_dtype), pi[perm], x[perm].contiguous())
        self._grids[h] = g
        return g

    def _grid_level(self, g: _Grid, q: Tensor, qb: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact k closest among the 27 cells around each query: (Q, k) squared distances, point rows."""
        xs = g.xs
        dev = q.device
        Q = q.shape[0]
        d2_out = q.new_full((Q, k), math.inf)
        r_out = torch.zeros(Q, k, dtype=torch.long, device=dev)
        if Q == 0 or xs.shape[0] == 0:
            return d2_out, r_out
        dims = g.dims
        cell = torch.floor((q - g.origin[qb]) / g.h)
        hi = (dims - 4).to(cell.dtype)  # points occupy raw cells 0 .. dims - 5
        cell = torch.maximum(torch.minimum(cell, hi), torch.full_like(cell, -1.0)).long() + 2
        key = ((qb * dims[0] + cell[:, 0]) * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        off = (_OFFSETS9[:, 0] * dims[1] + _OFFSETS9[:, 1]).to(dev) * dims[2]
        kz = key[:, None] + off  # centre cell of each of the 9 (x, y) columns
        # the three cells along z of one column have consecutive keys: one run of sorted points
        st = g.cstart[kz - 1].long()
        cnt = g.cstart[kz + 2].long() - st
        tot = cnt.sum(1)
        s = 0
        csum = torch.cumsum(tot, 0)
        while s < Q:
            base_c = int(csum[s - 1]) if s > 0 else 0
            e = int(torch.searchsorted(csum, base_c + self.chunk // 4, right=True))
            e = min(max(e, s + 1), Q)
            c_cnt = cnt[s:e].reshape(-1)
            c_st = st[s:e].reshape(-1)
            ctot = tot[s:e]
            T = int(ctot.sum())
            C = e - s
            if T == 0:
                s = e
                continue
            run = torch.repeat_interleave(torch.arange(c_cnt.numel(), device=dev), c_cnt, output_size=T)
            run_off = torch.cumsum(c_cnt, 0) - c_cnt
            ar = torch.arange(T, device=dev)
            rows = c_st[run] + (ar - run_off[run])
            qi = torch.div(run, 9, rounding_mode="floor")
            diff = xs[rows] - q[s:e][qi]
            d2 = (diff * diff).sum(-1)
            if k == 1:  # segment arg-min without a padded table
                best = q.new_full((C,), math.inf).scatter_reduce(0, qi, d2, "amin")
                big = torch.iinfo(torch.long).max
                cand = torch.where(d2 == best[qi], rows, torch.full_like(rows, big))
                rbest = torch.full((C,), big, dtype=torch.long, device=dev).scatter_reduce(0, qi, cand, "amin")
                d2_out[s:e, 0] = best
                r_out[s:e, 0] = torch.where(rbest == big, torch.zeros_like(rbest), rbest)
                s = e
                continue
            cmax = int(ctot.max())
            q_off = torch.cumsum(ctot, 0) - ctot
            pos = ar - q_off[qi]
            D = q.new_full((C, max(cmax, k)), math.inf)
            D[qi, pos] = d2
            Rw = torch.zeros(C, max(cmax, k), dtype=torch.long, device=dev)
            Rw[qi, pos] = rows
            vals, j = torch.topk(D, k, dim=1, largest=False, sorted=True)
            d2_out[s:e] = vals
            r_out[s:e] = torch.gather(Rw, 1, j)
            s = e
        return d2_out, r_out

    def _initial_h(self, k: int) -> float:
        if k in self._h0:
            return self._h0[k]
        pb, pi, x = self._flat_points()
        m = x.shape[0]
        if m == 0:
            return 1.0
        g = torch.Generator(device="cpu").manual_seed(0)
        sel = torch.randperm(m, generator=g)[:128].to(x.device)
        d2, _ = self._brute(x[sel], pb[sel], min(k + 1, self.n))
        kth = d2[:, -1]
        kth = kth[torch.isfinite(kth)]
        h = float(kth.median().sqrt()) if kth.numel() else 1.0
        if not h > 0 or not math.isfinite(h):
            ext = float((x.amax(0) - x.amin(0)).max())
            h = ext / 16 if ext > 0 else 1.0
        self._h0[k] = h
        return h

    def _grid_search(self, q: Tensor, qb: Tensor, k: int, max_distance: float | None,
                     upper: Tensor | None = None):
        Q = q.shape[0]
        d2_out = q.new_full((Q, k), math.inf)
        i_out = torch.zeros(Q, k, dtype=torch.long, device=q.device)
        h0 = self._initial_h(k)
        if max_distance is not None:
            h0 = min(h0, max_distance)
        pb, pi, x = self._flat_points()
        ext = float((x.amax(0) - x.amin(0)).max()) if x.numel() else 0.0
        # first level of each query: the smallest h = h0 2^j that covers a known upper bound on its distance
        if upper is not None:
            ratio = (upper.clamp_min(0).sqrt() / h0).clamp_min(1.0)
            start = torch.ceil(torch.log2(ratio) - 1e-9).clamp(0, 60).long()
            start = torch.where(torch.isfinite(upper), start, torch.zeros_like(start))
        else:
            start = torch.zeros(Q, dtype=torch.long, device=q.device)
        todo = torch.arange(Q, device=q.device)
        level, h = 0, h0
        while todo.numel():
            last = max_distance is not None and h >= max_distance
            if last:
                h = max_distance
            g = None if (h > 2 * ext and not last) else self._grid(h)
            if g is None and not (h > 2 * ext):  # table too fine for memory: this level is skipped
                if last:
                    d2, idx = self._brute(q[todo], qb[todo], k)
                    d2_out[todo], i_out[todo] = d2, idx
                    break
                h *= 2.0
                level += 1
                continue
            if g is None:  # brute force over the remaining queries
                d2, idx = self._brute(q[todo], qb[todo], k)
                d2_out[todo], i_out[todo] = d2, idx
                break
            act = todo if last else todo[start[todo] <= level]
            if act.numel():
                d2, rows = self._grid_level(g, q[act], qb[act], k)
                done = torch.ones_like(d2[:, -1], dtype=torch.bool) if last else d2[:, -1] <= h * h
                sel = act[done]
                d2_out[sel] = d2[done]
                i_out[sel] = g.rows[rows[done]]
                finished = torch.zeros(Q, dtype=torch.bool, device=q.device)
                finished[sel] = True
                todo = todo[~finished[todo]]
            if last:
                break
            h *= 2.0
            level += 1
        return d2_out, i_out

    # ------------------------------------------------------------------ public
    def knn(self, query: Tensor, k: int, query_mask: Tensor | None = None,
            max_distance: float | None = None, hint: Tensor | None = None) -> Neighbors:
        """k nearest indexed points of every query point.

        Args:
            query: (*B, Q, 3) query points in the frame of the indexed points (same *B), metres.
            k: neighbours per query (>= 1).
            query_mask: optional (*B, Q) bool; False queries get no neighbours.
            max_distance: if given, neighbours farther than this (metres) are not returned (``valid`` False).
            hint: optional (*B, Q) int64 row of a nearby point per query, e.g. the previous ICP correspondence
                (k = 1 only). Its distance bounds the search, which only makes the grid search faster; the
                result is unchanged.

        Returns:
            :class:`Neighbors` (*B, Q, k).
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if max_distance is not None and not max_distance > 0:
            raise ValueError(f"max_distance must be positive, got {max_distance}")
        cq = clean_points(query, query_mask, "query")
        if query.shape[:-2] != self.lead:
            raise ValueError(
                f"query batch shape {tuple(query.shape[:-2])} differs from the points' {tuple(self.lead)}")
        if query.dtype != self.points.dtype or query.device != self.points.device:
            raise ValueError("query and points must share dtype and device")
        nq = query.shape[-2]
        qm = cq.mask.reshape(-1, nq)
        qf = cq.points.reshape(-1, nq, 3)
        with torch.no_grad():
            if self.method == "grid":
                qb, qi = torch.nonzero(qm, as_tuple=True)
                qsel = qf.detach()[qb, qi]
                upper = None
                if hint is not None and k == 1:
                    if hint.shape != qm.shape[:-1] + qm.shape[-1:] and hint.shape != query.shape[:-1]:
                        raise ValueError(f"hint must have shape (*B, Q) = {tuple(query.shape[:-1])}")
                    hs = hint.reshape(-1, nq)[qb, qi].clamp(0, max(self.n - 1, 0))
                    hp = self.points[qb, hs]
                    upper = torch.where(self.mask[qb, hs], ((hp - qsel) ** 2).sum(-1),
                                        torch.full_like(hp[:, 0], math.inf))
                d2f, idxf = self._grid_search(qsel, qb, k, max_distance, upper)
                d2 = query.new_full((self.B, nq, k), math.inf)
                idx = torch.zeros(self.B, nq, k, dtype=torch.long, device=query.device)
                d2[qb, qi] = d2f
                idx[qb, qi] = idxf
            else:
                d2, idx = self._brute_padded(qf.detach(), qm, k)
        V = torch.isfinite(d2)
        if max_distance is not None:
            V = V & (d2 <= max_distance * max_distance)
        I = torch.where(V, idx, torch.zeros_like(idx))
        if query.requires_grad or self.points.requires_grad:
            nb = torch.gather(self.points, 1, I.reshape(self.B, -1, 1).expand(-1, -1, 3)).reshape(self.B, nq, k, 3)
            D = (nb - qf[:, :, None]).norm(dim=-1)
        else:
            D = d2.clamp_min(0).sqrt()
        D = torch.where(V, D, torch.full_like(D, math.inf))
        return Neighbors(I.reshape(*self.lead, nq, k), D.reshape(*self.lead, nq, k), V.reshape(*self.lead, nq, k))


def knn(
    query: Tensor,
    points: Tensor,
    k: int,
    query_mask: Tensor | None = None,
    points_mask: Tensor | None = None,
    max_distance: float | None = None,
    method: str = "auto",
) -> Neighbors:
    """k nearest neighbours of ``query`` among ``points``, batched over clouds.

    Args:
        query: (*B, Q, 3) query points, metres.
        points: (*B, N, 3) searched points in the same frame, metres.
        k: neighbours per query.
        query_mask: optional (*B, Q) bool.
        points_mask: optional (*B, N) bool; False rows (and NaN rows) are never returned.
        max_distance: optional distance bound (metres); farther neighbours are invalid.
        method: ``"auto"``, ``"brute"`` or ``"grid"`` (see the module docstring; all exact).

    Returns:
        :class:`Neighbors` with ``indices``, ``distances`` and ``valid`` of shape (*B, Q, k), sorted by distance.

    Raises:
        ValueError: shape, dtype or device mismatches; bad k.
    """
    return NeighborIndex(points, points_mask, method=method).knn(query, k, query_mask, max_distance)


def radius_search(
    query: Tensor,
    points: Tensor,
    radius: float,
    max_neighbors: int,
    query_mask: Tensor | None = None,
    points_mask: Tensor | None = None,
    method: str = "auto",
) -> Neighbors:
    """Neighbours within ``radius``, at most the ``max_neighbors`` closest (Open3D's "hybrid" search).

    Args:
        query: (*B, Q, 3) query points, metres.
        points: (*B, N, 3) searched points, metres.
        radius: search radius, metres.
        max_neighbors: cap on neighbours per query (padded width of the result).
        query_mask, points_mask, method: as in :func:`knn`.

    Returns:
        :class:`Neighbors` (*B, Q, max_neighbors); ``valid`` marks neighbours within the radius.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    return knn(query, points, max_neighbors, query_mask, points_mask, max_distance=radius, method=method)
