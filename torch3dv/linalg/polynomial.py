"""Batched univariate polynomials: evaluation, products, derivatives and *all real roots*.

Coefficients are stored in ascending order: ``c[..., i]`` multiplies ``z**i``; a polynomial of degree m has
m + 1 coefficients (leading zeros allowed, the formal degree then exceeds the true one).

Real roots (:func:`real_roots`, :func:`real_roots_homogeneous`) are found without eigenvalues, fully batched and
without a Python loop over problems:

* The real line is covered by two bounded charts: ``z`` in [-1, 1] for ``p`` and ``w = 1 / z`` in (-1, 1) for the
  reversed polynomial ``w**m p(1 / w)`` (its coefficients flipped). Every real root of ``p``, including one "at
  infinity" when the leading coefficient vanishes, lies in exactly one chart, and every chart is bounded.
* Fast path: ``p`` and ``p'`` are evaluated on a uniform grid of each chart with one matrix product; every cell
  with a sign change of ``p`` brackets a root, and a cell with a sign change of ``p'`` but not of ``p`` whose end
  values are within a Taylor bound of zero is split at the root of ``p'`` (a close pair of roots).
* Verification: the number of distinct real roots of each chart is counted with a Sturm sequence; rows where
  the fast path found a different number (clusters of roots inside one cell, about 5% of the 5-point
  polynomials) are redone with the derivative cascade: the real roots of ``p^(j+1)`` split [-1, 1] into
  intervals on which ``p^(j)`` is monotone, so going from the linear ``p^(m-1)`` down to ``p`` isolates every
  real root (exact up to rounding, but about five times slower).
* Each bracketed root is found by a bracketed Newton iteration (Newton step when it stays inside the bracket,
  bisection otherwise), started at the regula-falsi point and iterated until the step is below
  ``eps^(2/3)``. Only brackets with a sign change are iterated (compacted first).

Exact double roots (tangential zeros without a sign change) are not reported, as by any sign-based method; they
are ill-conditioned anyway. In float32 the Sturm count itself can be wrong for degree 10, so the verification is
weaker there. The result carries no gradient (everything runs under ``torch.no_grad``); callers that need
derivatives take one Newton step with autograd from the detached root, ``z = z0 - p(z0) / p'(z0)``, which yields
the implicit-function gradient ``dz = -dp(z0) / p'(z0)``: see :func:`newton_step`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RealRoots(NamedTuple):
    """Real roots padded to the formal degree.

    Attributes:
        roots: (..., m) real roots; for ``real_roots_homogeneous`` (..., m, 2) pairs ``(u, v)`` with ``z = u / v``
            and ``max(|u|, |v|) = 1`` (``v = 0`` is a root at infinity). Invalid slots hold 0 (or (0, 1)).
        valid: (..., m) bool, True for found roots. Valid slots come first; their order is otherwise unspecified.
    """

    roots: Tensor
    valid: Tensor


def polyval(c: Tensor, x: Tensor) -> Tensor:
    """Evaluates polynomials by Horner's rule.

    Args:
        c: ascending coefficients (..., m + 1).
        x: points (..., K), broadcast against the batch dims of ``c``.

    Returns:
        (..., K) values.
    """
    m = c.shape[-1] - 1
    out = c[..., m, None].expand(torch.broadcast_shapes(c.shape[:-1] + (1,), x.shape)).clone()
    for i in range(m - 1, -1, -1):
        out = torch.addcmul(c[..., i, None], out, x)
    return out


def polyval_homogeneous(c: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Evaluates the homogenised polynomial ``sum_i c_i u^i v^(m - i)`` (equals ``v^m p(u / v)``).

    Args:
        c: ascending coefficients (..., m + 1).
        u, v: (..., K) homogeneous coordinates of the points.
    """
    m = c.shape[-1] - 1
    out = c[..., m, None] * torch.ones_like(u)
    vp = torch.ones_like(v)
    for i in range(m - 1, -1, -1):
        vp = vp * v
        out = out * u + c[..., i, None] * vp
    return out


def polyder(c: Tensor) -> Tensor:
    """Derivative coefficients (..., m) of ascending coefficients (..., m + 1) (m >= 1)."""
    m = c.shape[-1] - 1
    k = torch.arange(1, m + 1, dtype=c.dtype, device=c.device)
    return c[..., 1:] * k


_MUL_TABLES: dict = {}


def _mul_table(la: int, lb: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (la, lb, dtype, device)
    T = _MUL_TABLES.get(key)
    if T is None:
        T = torch.zeros(la * lb, la + lb - 1, dtype=dtype)
        for i in range(la):
            for j in range(lb):
                T[i * lb + j, i + j] = 1.0
        T = T.to(device)
        _MUL_TABLES[key] = T
    return T


def polymul(a: Tensor, b: Tensor) -> Tensor:
    """Product of polynomials: (..., la) x (..., lb) -> (..., la + lb - 1) ascending coefficients."""
    la, lb = a.shape[-1], b.shape[-1]
    outer = (a[..., :, None] * b[..., None, :]).flatten(-2)
    return outer @ _mul_table(la, lb, outer.dtype, outer.device)


def newton_step(c: Tensor, z0: Tensor) -> Tensor:
    """One Newton step ``z0 - p(z0) / p'(z0)`` (with autograd through ``c``) from detached roots ``z0`` (..., K).

    At a root the value is unchanged to rounding, and the derivative w.r.t. ``c`` is the implicit-function
    derivative ``dz = -dp(z0) / p'(z0)``. ``p'(z0) = 0`` (double root) is clamped to keep values finite.
    """
    z0 = z0.detach()
    p = polyval(c, z0)
    dp = polyval(polyder(c), z0)
    tiny = torch.finfo(z0.dtype).tiny ** 0.5
    dp = torch.where(dp.abs() < tiny, torch.where(dp < 0, -tiny, tiny).to(dp.dtype), dp)
    return z0 - p / dp


def _bracketed_newton(qT: Tensor, lo: Tensor, hi: Tensor, ql: Tensor, qh: Tensor, max_iter: int) -> Tensor:
    """Root of ``q`` (coefficients transposed: (k + 1, V)), monotone on [lo, hi] (V,), ``ql * qh <= 0``.

    The coefficient-major layout keeps every Horner step a contiguous vector operation.
    """
    s = torch.where(qh >= ql, 1.0, -1.0).to(qT.dtype)  # orient so that g = s q is increasing
    g = qT * s
    gl, gh = ql * s, qh * s
    eps = torch.finfo(qT.dtype).eps
    # a Newton step of size d leaves an error ~ d^2: stopping at |d| < eps^(2/3) is converged to rounding
    tol = eps ** (2.0 / 3.0)
    den = gh - gl
    frac = torch.where(den > 0, -gl / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(den, 0.5))
    x = lo + (hi - lo) * frac.clamp(0.0, 1.0)
    k = g.shape[0] - 1
    kk = torch.arange(1, k + 1, dtype=g.dtype, device=g.device)[:, None]
    dg = g[1:] * kk
    out = x.clone()
    active = None  # indices into out of the rows still iterating (None = all)
    conv = torch.zeros_like(x, dtype=torch.bool)
    for it in range(max_iter):
        v = g[k]
        dv = dg[k - 1]
        for i in range(k - 1, -1, -1):
            v = torch.addcmul(g[i], v, x)
            if i >= 1:
                dv = torch.addcmul(dg[i - 1], dv, x)
        lo = torch.where(v > 0, lo, x)
        hi = torch.where(v < 0, hi, x)
        xn = x - v / dv
        inside = (xn >= lo) & (xn <= hi)
        xnew = torch.where(inside, xn, 0.5 * (lo + hi))
        xnew = torch.where(v == 0, x, xnew)
        small = ((xnew - x).abs() <= tol) | ((hi - lo) <= 4 * eps)
        x = torch.where(conv, x, xnew)
        conv = conv | small
        last = it == max_iter - 1
        if it % 2 == 1 or last:
            ndone = int(conv.sum())
            if ndone == conv.numel() or last:
                if active is None:
                    out = x
                else:
                    out[active] = x
                break
            if ndone > 0.25 * conv.numel():
                keep = (~conv).nonzero(as_tuple=True)[0]
                fin = conv.nonzero(as_tuple=True)[0]
                if active is None:
                    out[fin] = x[fin]
                    active = keep
                else:
                    out[active[fin]] = x[fin]
                    active = active[keep]
                x, lo, hi, conv = x[keep], lo[keep], hi[keep], conv[keep]
                g, dg = g[:, keep], dg[:, keep]
    return out


def _horner_T(cT: Tensor, x: Tensor) -> Tensor:
    """Horner with coefficient-major layout: cT (m + 1, *S) against x (K, *S) -> (K, *S)."""
    m = cT.shape[0] - 1
    v = cT[m].expand_as(x)
    for i in range(m - 1, -1, -1):
        v = torch.addcmul(cT[i], v, x)
    return v


_GRIDS: dict = {}


def _grid(G: int, m: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Grid points (G + 1,) on [-1, 1] and the matrix (m + 1, 2 (G + 1)) evaluating p and p' there."""
    key = (G, m, dtype, device)
    out = _GRIDS.get(key)
    if out is None:
        x = torch.linspace(-1.0, 1.0, G + 1, dtype=torch.float64)
        i = torch.arange(m + 1, dtype=torch.float64)[:, None]
        V = x[None, :] ** i  # (m + 1, G + 1)
        D = torch.zeros_like(V)
        D[1:] = i[1:] * x[None, :] ** (i[1:] - 1)
        out = (x.to(dtype=dtype, device=device), torch.cat([V, D], 1).to(dtype=dtype, device=device))
        _GRIDS[key] = out
    return out


@torch.no_grad()
def _grid_chart_roots(P: Tensor, max_iter: int, G: int) -> tuple[Tensor, Tensor]:
    """Real roots in [-1, 1] of the rows of ``P`` (R, m + 1).

    Returns (rows, roots): the row index and value of every root found (variable count).
    """
    m = P.shape[1] - 1
    dtype, device = P.dtype, P.device
    s = P.abs().amax(-1, keepdim=True)
    P = P / torch.where(s > 0, s, torch.ones_like(s))
    x, VD = _grid(G, m, dtype, device)
    h = 2.0 / G
    vals = P @ VD  # (R, 2 (G + 1)): p and p' on the grid
    neg = vals < 0
    change = neg[:, 1: G + 1] ^ neg[:, :G]  # sign change of p in the cell (a zero counts as positive)
    dchange = neg[:, G + 2:] ^ neg[:, G + 1: 2 * G + 1]
    # a cell without a sign change of p but with one of p' may hide a pair of close roots; p can only reach
    # zero inside if |p| at both ends is within the Taylor bound |p'| h + M2 h^2 / 2 (M2 bounds |p''|)
    prow, pcol = (dchange & ~change).nonzero(as_tuple=True)
    rows_l, los, his, pls, phs = [], [], [], [], []
    if prow.numel() > 0:
        i = torch.arange(m + 1, dtype=dtype, device=device)
        M2 = (P[prow].abs() * (i * (i - 1))).sum(-1)
        pl, ph = vals[prow, pcol], vals[prow, pcol + 1]
        dl, dh = vals[prow, pcol + G + 1], vals[prow, pcol + G + 2]
        bound = 0.5 * M2 * h * h
        near = (pl.abs() <= dl.abs() * h + bound) & (ph.abs() <= dh.abs() * h + bound)
        prow, pcol, pl, ph, dl, dh = prow[near], pcol[near], pl[near], ph[near], dl[near], dh[near]
    if prow.numel() > 0:
        a, b = x[pcol], x[pcol + 1]
        Pp = P[prow]
        c = _bracketed_newton(polyder(Pp).t().contiguous(), a, b, dl, dh, max_iter)
        pc = _horner_T(Pp.t().contiguous(), c[None])[0]
        split = (pc * pl) <= 0
        prow, a, b, c, pc, pl, ph = prow[split], a[split], b[split], c[split], pc[split], pl[split], ph[split]
        rows_l += [prow, prow]
        los += [a, c]
        his += [c, b]
        pls += [pl, pc]
        phs += [pc, ph]
    crow, ccol = change.nonzero(as_tuple=True)
    rows_l.append(crow)
    los.append(x[ccol])
    his.append(x[ccol + 1])
    pls.append(vals[crow, ccol])
    phs.append(vals[crow, ccol + 1])
    rows = torch.cat(rows_l)
    if rows.numel() == 0:
        return rows, P.new_zeros(0)
    lo, hi, ql, qh = torch.cat(los), torch.cat(his), torch.cat(pls), torch.cat(phs)
    r = _bracketed_newton(P[rows].t().contiguous(), lo, hi, ql, qh, max_iter)
    return rows, r


@torch.no_grad()
def _cascade_chart_roots(P: Tensor, max_iter: int) -> tuple[Tensor, Tensor]:
    """Real roots in [-1, 1] of the rows of ``P`` (R, m + 1) by the derivative cascade (robust, slower).

    Returns (rows, roots) like :func:`_grid_chart_roots`.
    """
    R, m1 = P.shape
    m = m1 - 1
    dtype, device = P.dtype, P.device
    PT = P.t().contiguous()

    def normalise(c):
        s = c.abs().amax(0, keepdim=True)
        return c / torch.where(s > 0, s, torch.ones_like(s))

    ders = [normalise(PT)]
    for _ in range(m - 1):
        d = ders[-1]
        kk = torch.arange(1, d.shape[0], dtype=dtype, device=device)[:, None]
        ders.append(normalise(d[1:] * kk))
    breaks = PT.new_zeros(0, R)
    minus = torch.full((1, R), -1.0, dtype=dtype, device=device)
    plus = torch.full((1, R), 1.0, dtype=dtype, device=device)
    valid = torch.zeros(0, R, dtype=torch.bool, device=device)
    for k in range(1, m + 1):
        q = ders[m - k]  # degree k, (k + 1, R)
        lo = torch.cat([minus, breaks], 0)  # (k, R)
        hi = torch.cat([breaks, plus], 0)
        ends = _horner_T(q, torch.cat([minus, breaks, plus], 0))  # (k + 1, R)
        ql, qh = ends[:-1], ends[1:]
        valid = ((ql < 0) & (qh >= 0)) | ((ql > 0) & (qh <= 0))
        valid[0] |= (ql[0] == 0) & (qh[0] != 0)
        valid &= lo <= hi
        roots = lo.clone()
        ivs, cols = valid.nonzero(as_tuple=True)
        if cols.numel() > 0:
            roots[ivs, cols] = _bracketed_newton(q[:, cols], lo[ivs, cols], hi[ivs, cols], ql[ivs, cols],
                                                 qh[ivs, cols], max_iter)
        breaks = roots
    rows, ivs = valid.t().nonzero(as_tuple=True)
    return rows, breaks.t()[rows, ivs]


@torch.no_grad()
def _sturm_count(P: Tensor) -> tuple[Tensor, Tensor]:
    """Number of distinct real roots in (-1, 1] of the rows of ``P`` (R, m + 1) from a Sturm sequence.

    Returns (count (R,), reliable (R,)); ``reliable`` is False where the remainder sequence lost a degree
    (its leading coefficient vanished relative to the rest), i.e. where the count cannot be trusted.
    """
    R, m1 = P.shape
    dtype = P.dtype
    tiny = torch.finfo(dtype).tiny

    def normalise(c):
        s = c.abs().amax(-1, keepdim=True)
        return c / torch.where(s > tiny, s, torch.ones_like(s))

    a = normalise(P)
    b = normalise(polyder(a))

    def alt(c):  # value at -1
        sgn = 1.0 - 2.0 * (torch.arange(c.shape[-1], device=c.device) % 2).to(dtype)
        return (c * sgn).sum(-1)

    at_m1 = [alt(a), alt(b)]
    at_p1 = [a.sum(-1), b.sum(-1)]
    reliable = (a.abs().amax(-1) > 0) & (b[:, -1].abs() > 1e3 * torch.finfo(dtype).eps)
    for _ in range(m1 - 2):
        lc = b[:, -1]
        reliable &= lc.abs() > 1e3 * torch.finfo(dtype).eps
        lc = torch.where(lc != 0, lc, torch.ones_like(lc))
        q1 = a[:, -1] / lc
        r = a[:, :-1] - q1[:, None] * torch.cat([torch.zeros_like(b[:, :1]), b[:, :-1]], -1)
        q0 = r[:, -1] / lc
        r = -(r - q0[:, None] * b)[:, :-1]
        a, b = b, normalise(r)
        at_m1.append(alt(b))
        at_p1.append(b.sum(-1))

    def variations(vals):
        last = torch.zeros(R, dtype=dtype, device=P.device)
        count = torch.zeros(R, dtype=torch.long, device=P.device)
        for v in vals:
            sv = torch.sign(v)
            count += ((sv * last) < 0).long()
            last = torch.where(sv != 0, sv, last)
        return count

    return variations(at_m1) - variations(at_p1), reliable


@torch.no_grad()
def real_roots_homogeneous(c: Tensor, max_iter: int | None = None, grid: int = 32) -> RealRoots:
    """All real roots of polynomials, as homogeneous pairs (covers roots at infinity).

    Args:
        c: ascending coefficients (..., m + 1), m >= 1, float32 or float64. Rows that are entirely zero or
            non-finite have no valid roots.
        max_iter: cap on bracketed-Newton iterations per root (default: enough for bisection to reach the
            dtype's precision on [-1, 1]).
        grid: cells per chart of the fast path.

    Returns:
        ``RealRoots`` with roots (..., m, 2) = (u, v), z = u / v, and valid (..., m).
    """
    lead = c.shape[:-1]
    m = c.shape[-1] - 1
    if m < 1:
        raise ValueError(f"need degree >= 1, got coefficients of shape {tuple(c.shape)}")
    if max_iter is None:
        max_iter = 64 if c.dtype == torch.float64 else 32
    c = c.reshape(-1, m + 1)
    n = c.shape[0]
    finite = torch.isfinite(c).all(-1)
    c = torch.where(finite[:, None], c, torch.zeros_like(c))
    P = torch.stack([c, c.flip(-1)], 1).reshape(2 * n, m + 1)  # row 2 i: chart z, row 2 i + 1: chart w = 1 / z
    uv = torch.zeros(n, m, 2, dtype=c.dtype, device=c.device)
    uv[..., 1] = 1
    valid = torch.zeros(n, m, dtype=torch.bool, device=c.device)
    rows, r = _grid_chart_roots(P, max_iter, grid)
    # the grid can miss clusters of roots inside one cell: verify the count per chart with a Sturm sequence
    # and redo the rows that disagree with the (exact, slower) derivative cascade
    found = torch.bincount(rows, minlength=2 * n)
    expected, reliable = _sturm_count(P)
    redo = (found != expected) | ~reliable
    if bool(redo.any()):
        ridx = redo.nonzero(as_tuple=True)[0]
        keep = ~redo[rows]
        rows2, r2 = _cascade_chart_roots(P[ridx], max_iter)
        rows, r = torch.cat([rows[keep], ridx[rows2]]), torch.cat([r[keep], r2])
    if rows.numel() > 0:
        prob, chart = rows // 2, rows % 2
        keep = (chart == 0) | (r.abs() < 1)  # |w| = 1 belongs to chart z
        prob, chart, r = prob[keep], chart[keep], r[keep]
        order = torch.argsort(prob, stable=True)
        prob, chart, r = prob[order], chart[order], r[order]
        # slot of each root within its problem
        counts = torch.bincount(prob, minlength=n)
        start = torch.cumsum(counts, 0) - counts
        slot = torch.arange(prob.numel(), device=c.device) - start[prob]
        ok = slot < m
        prob, chart, r, slot = prob[ok], chart[ok], r[ok], slot[ok]
        one = torch.ones_like(r)
        val = torch.where((chart == 0)[:, None], torch.stack([r, one], -1), torch.stack([one, r], -1))
        uv[prob, slot] = val
        valid[prob, slot] = True
    return RealRoots(uv.reshape(*lead, m, 2), valid.reshape(*lead, m))


@torch.no_grad()
def real_roots(c: Tensor, max_iter: int | None = None, grid: int = 32) -> RealRoots:
    """All finite real roots of polynomials with ascending coefficients (..., m + 1).

    Returns:
        ``RealRoots`` with roots (..., m) (invalid slots 0) and valid (..., m). Roots at infinity (vanishing
        leading coefficient) are not reported.
    """
    uv, valid = real_roots_homogeneous(c, max_iter, grid)
    u, v = uv.unbind(-1)
    valid = valid & (v != 0)
    z = torch.where(valid, u / torch.where(v != 0, v, torch.ones_like(v)), torch.zeros_like(u))
    return RealRoots(z, valid)
