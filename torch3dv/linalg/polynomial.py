"""Batched univariate polynomials: evaluation, products, derivatives and *all real roots*.

Coefficients are stored in ascending order: ``c[..., i]`` multiplies ``z**i``; a polynomial of degree m has
m + 1 coefficients (leading zeros allowed, the formal degree then exceeds the true one).

Real roots (:func:`real_roots_list`, :func:`real_roots_homogeneous`, :func:`real_roots`) are found without
eigenvalues, fully batched and without a Python loop over problems:

* The real line is covered by two bounded charts: ``z`` in [-b, b] for ``p`` and ``w = 1 / z`` in [-1 / b, 1 / b]
  for the reversed polynomial ``w**m p(1 / w)`` (its coefficients flipped), b = 1 + 2^-6; the second is rescaled
  to ``s = w b^2`` in [-b, b] so that both share one grid. Every real root of ``p``, including one "at
  infinity" when the leading coefficient vanishes, lies in exactly one chart, and every chart is bounded.
* Isolation by Sturm counts: the Sturm sequence of each chart polynomial is computed once (coefficients, each
  remainder scaled to unit max-abs), and its sign variations at the points of a coarse grid give the exact number
  of distinct real roots in every cell (all sequence polynomials are evaluated together: one matrix product with the
  powers of the grid points where the points are shared, one Horner pass otherwise). Cells holding two or more
  roots (close pairs are common: about a quarter of the 5-point polynomials have a pair closer than 1/16) are
  split again, up to ``levels`` times; cells holding one root become brackets. Where a remainder of the sequence loses a degree (the count
  cannot be trusted, very rare in float64) every first-level cell is split once and sign changes decide.
* Each bracketed root is found by a bracketed Newton iteration (Newton step when it stays inside the bracket,
  bisection otherwise), started at the regula-falsi point and iterated until the step is below
  ``eps^(2/3)``; the few slow brackets are compacted and iterated further.

Exact double roots (tangential zeros without a sign change) are not reported, as by any sign-based method, and
roots closer than the finest cell (``2 / (grid * subgrid^(levels - 1))``) are reported only when their number is
odd (then one of them); both are ill-conditioned anyway. In float32 the Sturm count itself can be wrong for degree
10, so use float64 for high degrees. The result carries no gradient (everything runs under ``torch.no_grad``);
callers that need derivatives take one Newton step with autograd from the detached root,
``z = z0 - p(z0) / p'(z0)``, which yields the implicit-function gradient ``dz = -dp(z0) / p'(z0)``: see
:func:`newton_step`.
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


# ------------------------------------------------------------------------------------------------ real roots


def _normalise_rows(c: Tensor) -> Tensor:
    """Scales the rows of ``c`` (R, k) to unit max-abs; zero or non-finite rows become zero."""
    return torch.nan_to_num(c / c.abs().amax(-1, keepdim=True), nan=0.0, posinf=0.0, neginf=0.0)


def _sturm_sequence(PT: Tensor) -> tuple[Tensor, Tensor]:
    """Sturm sequences of the columns of ``PT`` (m + 1, R) (ascending coefficients, unit max-abs).

    ``s_0 = p``, ``s_1 = p'``, ``s_(k+1) = -rem(s_(k-1), s_k)``. Each polynomial is kept as coefficients and
    evaluated directly: the equivalent three-term recurrence is unstable where the roots cluster (tiny
    remainders).

    Returns:
        Sq (m + 1, m + 1, R): ``Sq[i, k]`` is the coefficient of ``x^i`` in ``s_k`` (degree m - k; zero above);
        reliable (R,): False where a remainder lost a degree (leading coefficient below ``1e3 eps`` of its largest)
        or vanished (repeated roots), i.e. where the count cannot be trusted (Sq may then hold inf/NaN). Zero
        columns (no roots) count as reliable.
    """
    m = PT.shape[0] - 1
    dtype = PT.dtype
    Sq = PT.new_zeros(m + 1, m + 1, PT.shape[1])
    Sq[:, 0] = PT
    b = torch.mul(PT[1:], torch.arange(1, m + 1, dtype=dtype, device=PT.device)[:, None], out=Sq[:m, 1])
    a = PT
    # no rescaling between steps (only signs matter, and the remainders of degree <= 10 stay far from
    # overflow unless the sequence degenerates, which the reliability test below catches)
    for k in range(2, m + 1):
        d = m + 1 - k  # degree of b; a has degree d + 1
        lc = b[d]
        q1 = a[d + 1] / lc
        t = torch.addcmul(a[1:d + 1], b[:d], q1, value=-1.0)  # coefficients 1..d of a - q1 z b
        r = torch.cat([a[:1], t[:-1]]).addcmul_(b[:d], t[d - 1] / lc, value=-1.0)  # remainder, degree d - 1
        a, b = b, torch.neg(r, out=Sq[:d, k])
    # leading coefficients relative to each polynomial's largest: a degree drop or a vanished remainder (also
    # inf/NaN) is unreliable
    big = torch.maximum(Sq.amax(0), Sq.amin(0).neg_())  # (m + 1, R) max-abs (no full-size temporary)
    k = torch.arange(m + 1, device=PT.device)
    lead = Sq.reshape((m + 1) ** 2, -1).index_select(0, (m - k) * (m + 1) + k)  # (m + 1, R): Sq[m - k, k]
    reliable = (lead[1:].abs() > 1e3 * torch.finfo(dtype).eps * big[1:]).all(0)
    return Sq, reliable | (big[0] == 0)


def _powers(x: Tensor, m: int) -> Tensor:
    """``x^i``, i = 0..m, of points x (J, 1) as a (J, m + 1) matrix (products, not ``pow``: exact integer
    powers)."""
    cols = [torch.ones_like(x), x]
    for _ in range(2, m + 1):
        cols.append(cols[-1] * x)
    return torch.cat(cols[:m + 1], 1)


def _sturm_eval(Sq: Tensor, x: Tensor, p: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Values of p and Sturm sign variations at points ``x`` (J, K) (or (J, 1): the same points for all) for the
    columns (K) of the sequences Sq; returns p (J, K) and the variations (J, K).

    A zero counts as positive (-0.0 as negative), consistently for p and for the count, so that a cell
    ``(x_j, x_(j+1)]`` holds ``var_j - var_(j+1)`` distinct roots and p changes sign over it iff it holds an odd
    number (up to rounding). ``p``: the values of p at ``x`` when already known. All the polynomials of the
    sequence are evaluated together (a product with the powers of shared points, else zero-padded Horner;
    points-major layout keeps the long axis innermost).
    """
    m = Sq.shape[0] - 1
    if x.shape[1] == 1:  # shared points: one matrix product with the powers
        K = Sq.shape[2]
        S = (_powers(x, m) @ Sq.reshape(m + 1, -1)).reshape(-1, m + 1, K).transpose(0, 1)
    else:
        c = Sq.unsqueeze(2).unbind(0)  # per power: (m + 1 polynomials, 1, K)
        S = torch.addcmul(c[m - 1], c[m], x)
        for i in range(m - 2, -1, -1):
            S = torch.addcmul(c[i], S, x, out=S)
    if p is not None:
        S[0] = p
    neg = torch.signbit(S)
    var = (neg[1:] != neg[:-1]).view(torch.uint8).sum(0, dtype=torch.uint8).to(torch.int16)
    return S[0], var


def _newton_iter(C: tuple[Tensor, ...], x: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One safeguarded Newton step for increasing-oriented brackets (g(lo) <= 0 <= g(hi)).

    ``C``: the m + 1 rows (2, V) of the stacked coefficients of g and g' (g' padded with a zero leading
    coefficient), so that one Horner pass evaluates both.
    """
    m = len(C) - 1
    pd = torch.addcmul(C[m - 1], C[m], x)
    for i in range(m - 2, -1, -1):
        pd = torch.addcmul(C[i], pd, x, out=pd)
    v, dv = pd.unbind(0)
    up = torch.heaviside(v, _ZERO.to(v))  # 1 where g(x) > 0: x becomes the upper end
    hi = torch.lerp(hi, x, up)
    lo = torch.lerp(x, lo, up)
    # a non-finite Newton point (p' = 0) fails the bracket test, hence is replaced by bisection
    xn = torch.addcdiv(x, v, dv, value=-1.0)
    return torch.where((xn >= lo) & (xn <= hi), xn, torch.lerp(lo, hi, 0.5)), lo, hi


_ZERO = torch.zeros(())


def _bracketed_newton(cT: Tensor, lo: Tensor, hi: Tensor, plo: Tensor, phi: Tensor, iters: int,
                      max_iter: int) -> Tensor:
    """Roots of the columns of ``cT`` (m + 1, V) in brackets [lo, hi] (V,) over which p changes sign.

    Newton from the regula-falsi point; a step leaving the (shrinking) bracket is replaced by bisection. All
    brackets take ``iters`` steps together; then, up to ``max_iter`` steps in all, the unconverged ones
    (|step| > ``eps^(2/3)``: a Newton step of that size leaves an error ~ its square) are compacted and iterated.
    """
    dtype = cT.dtype
    m = cT.shape[0] - 1
    x = lo.new_empty(lo.shape)
    if x.numel() == 0:
        return x
    s = torch.sign(phi - plo)  # exactly one end is negative: never 0
    C = cT.new_zeros(m + 1, 2, cT.shape[1])
    g = torch.mul(cT, s, out=C[:, 0])
    torch.mul(g[1:], torch.arange(1, m + 1, dtype=dtype, device=cT.device)[:, None], out=C[:-1, 1])
    glo, ghi = plo * s, phi * s
    frac = torch.nan_to_num(glo / (glo - ghi), nan=0.5).clamp_(0.0, 1.0)
    x = torch.addcmul(lo, hi - lo, frac)
    eps = torch.finfo(dtype).eps
    tol = eps ** (2.0 / 3.0)
    Cv = C.unbind(0)
    n_first = min(iters, max_iter)
    for k in range(n_first):
        if k == n_first - 1:
            x_prev = x
        x, lo, hi = _newton_iter(Cv, x, lo, hi)
    done = n_first
    if done >= max_iter:
        return x
    d = (x - x_prev).abs()
    idx = ((d > tol) & (hi - lo > 4 * eps)).nonzero()[:, 0]
    while idx.numel() > 0 and done < max_iter:
        xs, los, his = x.index_select(0, idx), lo.index_select(0, idx), hi.index_select(0, idx)
        Cs = _gather_cols(C.reshape(-1, C.shape[2]), idx).reshape(C.shape[0], 2, -1).unbind(0)
        for k in range(min(4, max_iter - done)):
            xp = xs
            xs, los, his = _newton_iter(Cs, xs, los, his)
            done += 1
        x, lo, hi = x.index_copy(0, idx, xs), lo.index_copy(0, idx, los), hi.index_copy(0, idx, his)
        d = (xs - xp).abs()
        idx = idx.index_select(0, ((d > tol) & (his - los > 4 * eps)).nonzero()[:, 0])
    return x


# chart z covers [-_CHART, _CHART] and chart w the rest: a root at exactly z = +-1 (a zero at the end of a chart
# has no sign change to detect) is inside a chart
_CHART = 1.0 + 2.0**-6


class RootList(NamedTuple):
    """Real roots of a batch of polynomials as a flat list (a variable number per polynomial).

    Attributes:
        index: (K,) long, the polynomial (row) each root belongs to.
        slot: (K,) long, a distinct position 0, 1, ... of the root within its row (``slot < count``).
        roots: (K, 2) homogeneous pairs ``(u, v)``, ``z = u / v``, ``max(|u|, |v|) = 1``.
    """

    index: Tensor
    slot: Tensor
    roots: Tensor


def _gather_cols(X: Tensor, idx: Tensor) -> Tensor:
    """``X[:, idx]`` for X (k, K): ``gather`` is several times faster on CPU than ``index_select`` along dim 1."""
    return torch.gather(X, 1, idx[None].expand(X.shape[0], idx.numel()))


def _cumsum0(c: Tensor) -> Tensor:
    """Inclusive cumulative sum along dim 0 by doubling (log2 steps); several times faster than ``cumsum(0)`` for
    short dim 0 and long rows on CPU. (Counts must fit the dtype.)"""
    s = 1
    while s < c.shape[0]:
        c = torch.cat([c[:s], c[s:] + c[:-s]])
        s *= 2
    return c


def _level(PT: Tensor, Sq: Tensor, x: Tensor, G: int, F: int, force: Tensor | None, trust: Tensor | None,
           last: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One isolation level on the cells of the columns of PT (m + 1, K) / Sq (m + 1, m + 1, K).

    p is evaluated on the G F + 1 points ``x`` ((G F + 1, K), or (G F + 1, 1) shared). The Sturm count over the
    whole cell (its two ends) is compared with the sign changes of p; only where they differ (a few percent of
    the cells: two or more roots within a fine cell) is the sequence evaluated on every F-th point, and a coarse
    cell is refined when it holds more roots than its F fine cells separate (only where ``trust``; everywhere
    when ``trust`` is None; always where ``force``; never at the ``last`` level, where every sign change is a
    leaf).

    Returns leaf (G F, K) (fine cells bracketing one root each), refine (G, K) and p (G F + 1, K).
    """
    m = PT.shape[0] - 1
    K = PT.shape[1]
    if x.shape[1] == 1:  # shared points: one matrix product with the powers
        p = _powers(x, m) @ PT
    else:
        pc = PT.unsqueeze(1).unbind(0)
        p = torch.addcmul(pc[m - 1], pc[m], x)
        for i in range(m - 2, -1, -1):
            p = torch.addcmul(pc[i], p, x, out=p)
    neg = torch.signbit(p)
    change = neg[1:] != neg[:-1]  # (G F, K)
    refine = torch.zeros(G, K, dtype=torch.bool, device=PT.device)
    if last:
        return change, refine, p
    nsc = change.reshape(G, F, K).view(torch.uint8).sum(1, dtype=torch.int16)  # (G, K)
    ends = [0, G * F]
    _, var = _sturm_eval(Sq, x[ends] if x.shape[1] > 1 else x[ends], p=p[ends])
    bad = (var[0] - var[1]) > nsc.sum(0)
    if trust is not None:
        bad &= trust
    if force is not None:
        bad |= force
    idx = bad.nonzero()[:, 0]
    if idx.numel() == 0:
        return change, refine, p
    xs = x[::F] if x.shape[1] == 1 else _gather_cols(x[::F], idx)
    Sqs = _gather_cols(Sq.reshape(-1, K), idx).reshape(m + 1, m + 1, -1)
    _, var = _sturm_eval(Sqs, xs, p=_gather_cols(p[::F], idx))
    cnt = var[:-1] - var[1:]
    sub = (cnt >= 2) & (cnt > _gather_cols(nsc, idx))
    if force is not None:
        sub |= force.index_select(0, idx)
    refine.index_copy_(1, idx, sub)
    return change & ~refine.repeat_interleave(F, 0), refine, p


def _cells(mask: Tensor, x: Tensor, p: Tensor, rows: Tensor | None, by_row: bool = True) -> tuple[Tensor, ...]:
    """(row, lo, hi, p(lo), p(hi), j) of the cells flagged in ``mask`` (G, K) of the grids ``x`` ((G + 1, K) or
    (G + 1, 1)) and ``p`` (G + 1, K); ordered by column (so by row when ``rows`` is sorted) if ``by_row``, else by
    cell index (cheaper: no transposed scan)."""
    K = mask.shape[1]
    if by_row:
        kj = mask.t().nonzero()
        ki, j = kj[:, 0], kj[:, 1]
        pos = j * K + ki
    else:
        pos = mask.reshape(-1).nonzero()[:, 0]
        j, ki = pos // K, pos % K
    xf, pf = x.reshape(-1), p.reshape(-1)
    if x.shape[1] == 1:
        xlo, xhi = xf.index_select(0, j), xf.index_select(0, j + 1)
    else:
        xlo, xhi = xf.index_select(0, pos), xf.index_select(0, pos + K)
    r = ki if rows is None else rows.index_select(0, ki)
    return r, xlo, xhi, pf.index_select(0, pos), pf.index_select(0, pos + K), pos


@torch.no_grad()
def real_roots_list(c: Tensor, grid: int = 8, fine: int = 8, subgrid: int = 8, levels: int = 6,
                    iters: int = 8, max_iter: int | None = None) -> RootList:
    """All real roots (roots at infinity included) of the rows of ``c`` (R, m + 1), as a flat list.

    Isolation by Sturm counts on a grid of each chart, refined where a cell holds two or more roots that the
    sign changes of p on a finer grid do not separate (see the module docstring); each isolated root is then
    found by bracketed Newton.

    Args:
        c: ascending coefficients (R, m + 1), m >= 1. Rows that are zero or not finite have no roots.
        grid: cells per chart with a Sturm count at the first level.
        fine: each of them is split into ``fine`` cells on which only the sign of p is checked.
        subgrid: cells with a Sturm count each refined cell is split into (then ``fine`` cells each again).
        levels: maximum number of levels (fine cells of width ``2 b / (grid * subgrid^(levels - 1) * fine)``, about
            1e-6 by default, are not split further).
        iters: Newton/bisection steps taken by every root.
        max_iter: cap on the steps of the slowest roots (default: enough for bisection to reach rounding);
            ``max_iter = iters`` stops after ``iters`` steps (a root then may carry an error above rounding, for
            callers that polish their solutions anyway).
    """
    if c.ndim != 2 or c.shape[-1] < 2:
        raise ValueError(f"need coefficients of shape (R, m + 1) with m >= 1, got {tuple(c.shape)}")
    n, m1 = c.shape
    m = m1 - 1
    dtype, device = c.dtype, c.device
    if max_iter is None:
        max_iter = 64 if dtype == torch.float64 else 32
    # column 2 i: chart z in [-b, b]; column 2 i + 1: chart w = 1 / z in [-1 / b, 1 / b], as s = w b^2 in [-b, b]
    # (reversed coefficients scaled by b^(-2 i)), so that both charts share one grid
    scale = _CHART ** (-2.0 * torch.arange(m1, dtype=dtype, device=device))[:, None]
    cT = c.t()
    PT = torch.stack([cT, cT.flip(0) * scale], 2).reshape(m1, 2 * n)
    PT = torch.nan_to_num(PT / PT.abs().amax(0), nan=0.0, posinf=0.0, neginf=0.0)  # zero / non-finite: no roots
    Sq, reliable = _sturm_sequence(PT)
    R = 2 * n
    # level 0: p on a fine grid, Sturm counts on every ``fine``-th point (points-major layouts)
    xf = torch.linspace(-_CHART, _CHART, grid * fine + 1, dtype=dtype, device=device)[:, None]
    leaf, refine, pf = _level(PT, Sq, xf, grid, fine, ~reliable, None)
    *first, pos0 = _cells(leaf, xf, pf, None, by_row=False)
    # slots of the first-level roots: rank along the grid, chart w after chart z
    csum = _cumsum0(leaf.view(torch.uint8))
    tot = csum[-1].reshape(n, 2)[:, 0].repeat_interleave(2).long()  # chart-z count of the problem
    slot0 = csum.reshape(-1).index_select(0, pos0).long() - 1 + (first[0] & 1) * tot.index_select(0, first[0])
    found = [first]
    rows, lo, hi, _, _, _ = _cells(refine, xf[::fine], pf[::fine], None)
    t = torch.linspace(0.0, 1.0, subgrid * fine + 1, dtype=dtype, device=device)[:, None]
    for level in range(1, levels):
        if rows.numel() == 0:
            break
        x = torch.addcmul(lo, hi - lo, t)  # (subgrid * fine + 1, K)
        # rows with unreliable counts had every first-level cell split; from here sign changes decide for them
        last = level == levels - 1
        leaf, refine, p = _level(_gather_cols(PT, rows), _gather_cols(Sq.reshape(m1 * m1, R), rows).reshape(m1, m1, -1),
                                 x, subgrid, fine, None, reliable.index_select(0, rows), last)
        found.append(_cells(leaf, x, p, rows)[:5])
        if last:
            break
        rows, lo, hi, _, _, _ = _cells(refine, x[::fine], p[::fine], rows)
    r_rows, blo, bhi, plo, phi = (torch.cat(v) for v in zip(*found)) if len(found) > 1 else first
    r = _bracketed_newton(_gather_cols(PT, r_rows), blo, bhi, plo, phi, iters, max_iter)
    prob = r_rows >> 1
    slot = slot0
    L = len(found)
    if L > 1:
        # later levels: after all first-level roots of the problem; their list is sorted by (level, problem)
        n0 = slot0.numel()
        probL = prob[n0:]
        level_id = torch.repeat_interleave(torch.arange(1, L, device=device),
                                           torch.tensor([v[0].numel() for v in found[1:]], device=device))
        key = (level_id - 1) * n + probL
        counts = torch.bincount(key, minlength=(L - 1) * n)
        start = counts.cumsum(0) - counts
        offset = counts.reshape(L - 1, n).cumsum(0).reshape(-1) - counts
        offset += torch.bincount(prob[:n0], minlength=n).repeat(L - 1)
        slot = torch.cat([slot0, torch.arange(probL.numel(), device=device) - start.index_select(0, key)
                          + offset.index_select(0, key)])
    cf = (r_rows & 1).to(dtype)
    one = torch.ones_like(r)
    uv = torch.stack([torch.lerp(r, one, cf), torch.lerp(one, r * _CHART ** -2, cf)], -1)
    return RootList(prob, slot, uv)


@torch.no_grad()
def real_roots_homogeneous(c: Tensor, max_iter: int | None = None, grid: int = 8) -> RealRoots:
    """All real roots of polynomials, as homogeneous pairs (covers roots at infinity).

    Args:
        c: ascending coefficients (..., m + 1), m >= 1, float32 or float64. Rows that are entirely zero or
            non-finite have no valid roots.
        max_iter: cap on bracketed-Newton iterations per root (default: enough for bisection to reach the
            dtype's precision on [-1, 1]).
        grid: cells per chart at the first isolation level (see :func:`real_roots_list`).

    Returns:
        ``RealRoots`` with roots (..., m, 2) = (u, v), z = u / v, and valid (..., m) (valid slots first).
    """
    lead = c.shape[:-1]
    m = c.shape[-1] - 1
    if m < 1:
        raise ValueError(f"need degree >= 1, got coefficients of shape {tuple(c.shape)}")
    c = c.reshape(-1, m + 1)
    n = c.shape[0]
    uv = torch.zeros(n * m, 2, dtype=c.dtype, device=c.device)
    uv[:, 1] = 1
    valid = torch.zeros(n * m, dtype=torch.bool, device=c.device)
    if n > 0:
        prob, slot, r = real_roots_list(c, grid=grid, max_iter=max_iter)
        ok = slot < m  # at most m distinct roots; guards against rounding duplicates
        flat = (prob * m + slot)[ok]
        uv.index_copy_(0, flat, r[ok])
        valid.index_fill_(0, flat, True)
    return RealRoots(uv.reshape(*lead, m, 2), valid.reshape(*lead, m))


@torch.no_grad()
def real_roots(c: Tensor, max_iter: int | None = None, grid: int = 8) -> RealRoots:
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
