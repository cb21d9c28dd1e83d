"""Exact k-nearest-neighbour and radius search in batched, padded 3D point clouds.

Three exact methods, selected by ``method``:

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
* ``"kdtree"``: SciPy's C k-d tree (``scipy.spatial.cKDTree``), one tree per cloud of the batch, queried with
  ``torch.get_num_threads()`` workers. The fastest choice on the CPU; needs the optional extra
  ``pip install "torch3dv[fast]"`` (SciPy is imported only when this method is used). Coordinates are handed
  to the tree as float64, so the distances are those of the input coordinates, correctly rounded to their dtype.

``"auto"`` picks the k-d tree on the CPU when SciPy is installed (the grid for large clouds, brute force for
small ones otherwise) and brute force on other devices. All methods return the same neighbours (ties between
exactly equidistant points may be broken differently).

:class:`NeighborIndex` keeps the trees or sorted grids of a fixed cloud between calls (ICP queries the same
target every iteration). Neighbour search has no gradient; indices are integers. Distances are recomputed
differentiably from the coordinates when the inputs require gradients.
"""

from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple

import torch
from torch import Tensor

from torch3dv.registration.pointcloud import clean_points

METHODS = ("auto", "brute", "grid", "kdtree")
_MAX_CELLS = 1 << 25  # dense cell table entries per grid (int32: 128 MiB)
_OFFSETS9 = torch.tensor([(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)])


_HAS_SCIPY: bool | None = None


def _scipy_available() -> bool:
    """Whether SciPy can be imported (checked once, without importing it)."""
    global _HAS_SCIPY
    if _HAS_SCIPY is None:
        _HAS_SCIPY = importlib.util.find_spec("scipy") is not None
    return _HAS_SCIPY


def _ckdtree():
    try:
        from scipy.spatial import cKDTree
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('method="kdtree" needs SciPy: pip install "torch3dv[fast]" (or pip install scipy)') from e
    return cKDTree


def resolve_method(method: str, device: torch.device, n: int) -> str:
    """The concrete search method for ``method`` (``"auto"`` resolved) on ``device`` for clouds of ``n`` points."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "auto":
        return method
    if device.type != "cpu":
        return "brute"
    if _scipy_available():
        return "kdtree"
    return "grid" if n > 2048 else "brute"


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
        method: ``"auto"``, ``"kdtree"``, ``"grid"`` or ``"brute"`` (module docstring).
        chunk_elements: memory bound, number of query-candidate pairs held at once.
    """

    def __init__(self, points: Tensor, mask: Tensor | None = None, method: str = "auto",
                 chunk_elements: int = 1 << 22):
        cl = clean_points(points, mask)
        self.lead = points.shape[:-2]
        self.n = points.shape[-2]
        self.points = cl.points.reshape(-1, self.n, 3)
        self.mask = cl.mask.reshape(-1, self.n)
        self.B = self.points.shape[0]
        self.chunk = int(chunk_elements)
        self.method = resolve_method(method, points.device, self.n)
        if self.method == "kdtree" and points.device.type != "cpu":
            raise ValueError('method="kdtree" runs on the CPU only')
        self._trees: list | None = None
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

    # ------------------------------------------------------------------ k-d tree
    def _build_trees(self) -> list:
        if self._trees is None:
            cKDTree = _ckdtree()
            pts = self.points.detach().to(torch.float64).numpy()
            m = self.mask.numpy()
            self._trees = []
            for b in range(self.B):
                rows = m[b].nonzero()[0]
                # sliding-midpoint splits: 2-3x faster than median splits for queries off the surface
                tree = cKDTree(pts[b, rows], balanced_tree=False, compact_nodes=False) if rows.size else None
                self._trees.append((tree, torch.from_numpy(rows)))
        return self._trees

    def _kdtree_flat(self, q: Tensor, qb: Tensor, k: int, max_distance: float | None) -> tuple[Tensor, Tensor]:
        """Queries q (T, 3) of clouds qb (T,) (sorted) -> (T, k) float64 squared distances (inf = none), rows."""
        T = q.shape[0]
        d2_out = torch.full((T, k), math.inf, dtype=torch.float64)
        i_out = torch.zeros(T, k, dtype=torch.long)
        if T == 0:
            return d2_out, i_out
        # a hair beyond max_distance: the caller applies the exact bound d <= max_distance afterwards
        ub = math.inf if max_distance is None else max_distance * (1 + 1e-6)
        # threads only pay off for many queries (starting them costs about a millisecond)
        workers = max(1, torch.get_num_threads()) if T >= 4096 else 1
        qnp = q.detach().to(torch.float64).numpy()
        counts = torch.bincount(qb, minlength=self.B).tolist() if self.B > 1 else [T]
        s = 0
        for (tree, rows), c in zip(self._build_trees(), counts):
            if tree is None or c == 0:
                s += c
                continue
            kk = min(k, rows.shape[0])
            dd, ii = tree.query(qnp[s:s + c], k=kk, distance_upper_bound=ub, workers=workers)
            dd = torch.from_numpy(dd).reshape(-1, kk)
            ii = torch.from_numpy(ii).reshape(-1, kk)
            found = ii < rows.shape[0]
            d2_out[s:s + c, :kk] = torch.where(found, dd * dd, torch.full_like(dd, math.inf))
            i_out[s:s + c, :kk] = rows[torch.where(found, ii, torch.zeros_like(ii))]
            s += c
        return d2_out, i_out

    def _kdtree(self, q: Tensor, qm: Tensor, k: int, max_distance: float | None) -> tuple[Tensor, Tensor]:
        """q (B, Q, 3), qm (B, Q) -> (B, Q, k) float64 squared distances (inf = none) and indices."""
        B, Q = q.shape[:2]
        if bool(qm.all()):
            qb = torch.arange(B).repeat_interleave(Q)
            d2, rows = self._kdtree_flat(q.reshape(-1, 3), qb, k, max_distance)
            return d2.reshape(B, Q, k), rows.reshape(B, Q, k)
        d2_out = torch.full((B, Q, k), math.inf, dtype=torch.float64)
        i_out = torch.zeros(B, Q, k, dtype=torch.long)
        qb, qi = torch.nonzero(qm, as_tuple=True)
        d2_out[qb, qi], i_out[qb, qi] = self._kdtree_flat(q[qb, qi], qb, k, max_distance)
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
            if self.method == "kdtree":
                d2, idx = self._kdtree(qf, qm, k, max_distance)
                d2 = d2.to(query.dtype)
            elif self.method == "grid":
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
        method: ``"auto"``, ``"kdtree"``, ``"grid"`` or ``"brute"`` (see the module docstring; all exact).

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


def _sqnorm(e: Tensor) -> Tensor:
    """Squared length over a last axis of size 3 (written out: faster than ``(e * e).sum(-1)`` on CPU)."""
    return e[..., 0] * e[..., 0] + e[..., 1] * e[..., 1] + e[..., 2] * e[..., 2]


def _spread_bits(x: Tensor) -> Tensor:
    """The 10 low bits of int64 ``x`` moved to every third bit (for a 30-bit Morton code)."""
    x = x & 0x3FF
    x = (x | (x << 16)) & 0x030000FF
    x = (x | (x << 8)) & 0x0300F00F
    x = (x | (x << 4)) & 0x030C30C3
    return (x | (x << 2)) & 0x09249249


def _morton_order(q: Tensor, cloud: Tensor, mask: Tensor) -> Tensor:
    """Permutation of flat points q (T, 3) that groups them by cloud and, within a cloud, along a Z-order curve
    over their bounding box (masked points last): neighbouring queries then walk the same branches of the tree.
    """
    qm = torch.where(mask[:, None], q, torch.zeros((), dtype=q.dtype))
    lo = torch.where(mask[:, None], q, torch.full((), math.inf, dtype=q.dtype)).amin(0)
    hi = torch.where(mask[:, None], q, torch.full((), -math.inf, dtype=q.dtype)).amax(0)
    ext = float((hi - lo).amax()) if bool(mask.any()) else 0.0
    cell = ((qm - lo) * (1023.0 / max(ext, 1e-30))).clamp(0, 1023).long()
    code = _spread_bits(cell[:, 0]) | (_spread_bits(cell[:, 1]) << 1) | (_spread_bits(cell[:, 2]) << 2)
    code = torch.where(mask, code, torch.full_like(code, 1 << 30))
    return torch.argsort((cloud << 31) | code)


class NearestTracker:
    """Exact nearest indexed point of queries that move between calls (ICP's correspondences).

    With the k-d tree, every query keeps what its last search found at its position q0 then: the nearest point
    w at distance s0 and a lower bound s1 on the distance of every other point (the second nearest within
    ``1.5 max_distance``, or that bound). At the new position q (delta = |q - q0|) every point other than w is
    at least s1 - delta away and every point at least s0 - delta away (triangle inequality), so w is still the
    nearest when |q - w| < s1 - delta, and there is no point within ``max_distance`` when s0 - delta exceeds
    it. Only the queries that neither test settles (all of them on the first call) are searched again.

    Queries are kept in Z-order of their first position, so that those searched together are close in space
    (an unordered cloud searches about twice as fast so). Every distance compared is a difference of
    coordinates held exactly in the query dtype, so its rounding error is relative to the distance itself; the
    tests carry a margin of 64 rounding units of twice the search bound, and the answers are those of a fresh
    search up to points tied within rounding. With other methods every query is searched on every call.

    Args:
        index: :class:`NeighborIndex` over the fixed points, flat batch (B, N, 3).
        max_distance: neighbours farther than this (metres) are not matches.
    """

    def __init__(self, index: NeighborIndex, max_distance: float, candidates: int = 4):
        self.index = index
        self.max_distance = float(max_distance)
        self.bound = 1.5 * self.max_distance
        self.k = max(1, min(int(candidates), index.n))
        self.margin = 64 * torch.finfo(index.points.dtype).eps * 2 * self.bound
        self._state: dict | None = None
        self._hint = None
        self._pts: Tensor | None = None  # (B N, 3) indexed points, flat
        self.calls = 0
        self.searched = 0  # queries sent to the tree so far (for profiling)

    def _points(self) -> Tensor:
        if self._pts is None:
            self._pts = self.index.points.reshape(-1, 3).contiguous()
        return self._pts

    def _set_winner(self, u: Tensor, j: Tensor):
        """Makes candidate j the winner of slots u (the query-side test's thresholds included)."""
        st = self._state
        K = self.k
        flat = u * K + j
        st["j"].index_copy_(0, u, j)
        st["wxyz"].index_copy_(0, u, st["cxyz"].view(-1, 3).index_select(0, flat))
        st["row"].index_copy_(0, u, st["crow"].view(-1).index_select(0, flat))
        # every point but the winner was at least this far from q0: the second candidate's distance if the
        # winner is the first, the first's otherwise
        sd = st["sd"].index_select(0, u)
        other = torch.where(j == 0, sd[:, 1] if K > 1 else st["r"].index_select(0, u), sd[:, 0])
        st["low"].index_copy_(0, u, other - self.margin)

    def _reanchor(self, u: Tensor, q: Tensor, d2: Tensor, lim: Tensor):
        """Moves the reference of slots ``u`` to their current position q, where the candidates are at squared
        distances ``d2`` (U, K) and every other point at least ``lim`` away: the candidates are re-sorted and the
        closest becomes the winner."""
        st = self._state
        d2s, order = torch.sort(d2, dim=1)
        lim = lim - self.margin  # the rounding of the delta subtracted in lim
        sd = torch.minimum(d2s.sqrt(), lim[:, None])
        st["q0"].index_copy_(0, u, q.index_select(0, u))
        cx = st["cxyz"].index_select(0, u)
        st["cxyz"].index_copy_(0, u, torch.gather(cx, 1, order[..., None].expand(-1, -1, 3)))
        st["crow"].index_copy_(0, u, torch.gather(st["crow"].index_select(0, u), 1, order))
        st["sd"].index_copy_(0, u, sd)
        st["r"].index_copy_(0, u, lim)
        st["far"].index_copy_(0, u, sd[:, 0] - (self.margin + self.max_distance))
        self._set_winner(u, torch.zeros_like(u))

    def _search(self, q: Tensor, u: Tensor, dw2: Tensor):
        """Searches the slots ``u`` (sorted, hence by cloud) at q and stores their candidates."""
        ix = self.index
        st = self._state
        M, K = ix.n, self.k
        qs = q.index_select(0, u)
        qnp = qs.to(torch.float64).numpy()
        ub = self.bound * (1 + 1e-6)  # a hair beyond: the exact bound is applied in the query dtype
        workers = max(1, torch.get_num_threads()) if u.numel() >= 4096 else 1
        U = u.numel()
        dist = torch.full((U, K), math.inf, dtype=torch.float64)
        crow = torch.zeros(U, K, dtype=torch.long)
        if ix.B > 1:
            counts = torch.bincount(st["cloud"].index_select(0, u), minlength=ix.B).tolist()
        else:
            counts = [U]
        s = 0
        for (tree, rows), c in zip(ix._build_trees(), counts):
            if c and tree is not None:
                kk = min(K, rows.shape[0])
                dd, ii = tree.query(qnp[s:s + c], k=kk, distance_upper_bound=ub, workers=workers)
                dist[s:s + c, :kk] = torch.from_numpy(dd).reshape(c, kk)
                ii = torch.from_numpy(ii).reshape(-1).clamp_max(rows.shape[0] - 1)
                crow[s:s + c, :kk] = rows.index_select(0, ii).reshape(c, kk)
            s += c
        found = torch.isfinite(dist)
        sd = dist.clamp_max(self.bound).to(q.dtype)
        P = ix.points.reshape(-1, 3)
        flat = (crow + st["cloud"].index_select(0, u)[:, None] * M).view(-1)
        cxyz = P.index_select(0, flat).view(U, K, 3).masked_fill_(~found[..., None], math.inf)
        st["q0"].index_copy_(0, u, qs)
        st["cxyz"].index_copy_(0, u, cxyz)
        st["crow"].index_copy_(0, u, crow)
        st["sd"].index_copy_(0, u, sd)
        # no point other than the candidates is closer to q0 than r
        st["r"].index_copy_(0, u, sd[:, -1] - self.margin)
        st["far"].index_copy_(0, u, sd[:, 0] - (self.margin + self.max_distance))
        self._set_winner(u, torch.zeros(U, dtype=torch.long))
        dw2.index_copy_(0, u, _sqnorm(qs - cxyz[:, 0]))
        self.searched += U

    def __call__(self, query: Tensor, query_mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Q, 3) in the indexed points' frame, query_mask (B, Q) -> nearest rows (B, Q) int64 (0 where
        none) and ``valid`` (B, Q): a nearest point exists within ``max_distance`` (squared distances compared
        in the query dtype)."""
        ix = self.index
        q = query.detach()
        if ix.method != "kdtree":
            nb = ix.knn(q, 1, query_mask, max_distance=self.max_distance, hint=self._hint)
            self._hint = nb.indices[..., 0]
            return nb.indices[..., 0], nb.valid[..., 0]
        B, Q = q.shape[:2]
        T, K = B * Q, self.k
        qf = q.reshape(T, 3)
        m = query_mask.reshape(T)
        if self._state is None:
            cloud = torch.arange(B).repeat_interleave(Q)
            perm = _morton_order(qf, cloud, m)
            z = qf.new_zeros(T)
            self._state = st = dict(
                perm=perm, cloud=cloud[perm], q0=qf[perm], cxyz=qf.new_full((T, K, 3), math.inf),
                crow=torch.zeros(T, K, dtype=torch.long), sd=qf.new_zeros(T, K), j=torch.zeros(T, dtype=torch.long),
                row=torch.zeros(T, dtype=torch.long), wxyz=qf.new_full((T, 3), math.inf), low=z, r=z.clone(),
                far=z.clone())
            qf, m = st["q0"], m[perm]
            dw2 = qf.new_full((T,), math.inf)
            todo = torch.nonzero(m)[:, 0]
        else:
            st = self._state
            perm = st["perm"]
            qf, m = qf.index_select(0, perm), m.index_select(0, perm)
            dw2 = _sqnorm(qf - st["wxyz"])
            delta = _sqnorm(qf - st["q0"]).sqrt_()
            low = st["low"] - delta
            # the winner is still the nearest, or nothing is within max_distance
            done = ((low > 0) & (dw2 < low * low)) | (delta < st["far"])
            todo = torch.nonzero(m & ~done)[:, 0]
            if K > 1 and todo.numel():
                # the closest candidate is the nearest point if it is closer than every other point can be
                d2 = _sqnorm(st["cxyz"].index_select(0, todo) - qf.index_select(0, todo)[:, None])
                j = d2.argmin(-1)  # (Tensor.min with indices is slow on small CPU tensors in some builds)
                dm = torch.gather(d2, 1, j[:, None])[:, 0]
                lim = st["r"].index_select(0, todo) - delta.index_select(0, todo)
                ok = (lim > 0) & (dm < lim * lim)
                if bool(ok.any()):
                    self._reanchor(todo[ok], qf, d2[ok], lim[ok])
                    dw2.index_copy_(0, todo[ok], dm[ok])
                todo = todo[~ok]
        if todo.numel():
            self._search(qf, todo, dw2)
        self.calls += 1
        valid = m & (dw2 <= self.max_distance * self.max_distance)
        idx = torch.empty(T, dtype=torch.long)
        idx[perm] = st["row"].masked_fill(~valid, 0)
        out_valid = torch.empty(T, dtype=torch.bool)
        out_valid[perm] = valid
        return idx.reshape(B, Q), out_valid.reshape(B, Q)
