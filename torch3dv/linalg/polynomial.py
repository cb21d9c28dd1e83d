"""Batched univariate polynomials: evaluation, products, derivatives and *all real roots*.

Coefficients are stored in ascending order: ``c[..., i]`` multiplies ``z**i``; a polynomial of degree m has
m + 1 coefficients (leading zeros allowed, the formal degree then exceeds the true one).

Real roots (:func:`real_roots_list`, :func:`real_roots_homogeneous`, :func:`real_roots`) are found without
eigenvalues, fully batched and without a Python loop over problems:

* The real line is covered by two bounded charts: ``z`` in [-b, b] for ``p`` and ``w = 1 / z`` in [-1 / b, 1 / b]
  for the reversed polynomial ``w**m p(1 / w)`` (its coefficients flipped), b = 1 + 2^-6; the second is rescaled
  to ``s = w b^2`` in [-b, b] so that both share one grid. Every real root of ``p``, including one "at
  infinity" when the leading coefficient vanishes, lies in exactly one chart, and every chart is bounded.
* Isolation by Sturm counts, with one Sturm sequence per polynomial (coefficients, no rescaling), computed in its
  *home* chart: the one whose polynomial has the larger leading coefficient (so no root sits at the home chart's
  infinity). The signs of its leading coefficients alone give the number of distinct real roots, V(-inf) - V(+inf).
  The sign changes of p on a fine grid of both charts (one matrix product with the powers of the shared grid points)
  bracket one root each; where they add up to that number (about 89% of the 5-point polynomials) the isolation
  is complete. Elsewhere the sequence is evaluated on a coarse grid of both charts: directly in the home chart, and
  through its reversals ``x^d_k s_k(b^2 / x)`` in the other one (their values have the sign of ``x^-d_k s_k`` there,
  with -0 and +0 standing for the two ends of the home chart's line, and the orientation reversed). Coarse cells
  holding two or more roots that the fine sign changes do not separate (close pairs are common: about a quarter of
  the 5-point polynomials have a pair closer than 1/16) are split again, up to ``levels`` times, the count known
  from the level above deciding where the sequence is evaluated again; the other sign changes become brackets.
  Where a remainder of the sequence loses a degree (the count cannot be trusted, very rare in float64) every
  coarse cell is split once and sign changes decide.
* Each bracketed root is found by a bracketed Newton iteration (Newton step when it stays inside the bracket,
  bisection otherwise), started at the regula-falsi point and iterated until the step is below
  ``eps^(2/3)``; the few slow brackets are compacted and iterated further.

Exact double roots (tangential zeros without a sign change) are not reported, as by any sign-based method, and
roots closer than the finest cell (``2 b / (grid * subgrid^(levels - 1) * fine)``, about 1e-6) are reported only when
their number is odd (then one of them); both are ill-conditioned anyway. A root exactly on a grid point (z = 0, or
infinity when the leading coefficient vanishes) can hide another root in a fine cell next to it (that one is then
missed, the exact one reported twice). In float32 the Sturm count itself can be wrong for degree 10, so use float64
for high degrees. The result carries no gradient (everything runs under ``torch.no_grad``);
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


def _sturm_sequence(PT: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sturm sequences of the columns of ``PT`` (m + 1, R) (ascending coefficients, unit max-abs).

    ``s_0 = p``, ``s_1 = p'``, ``s_(k+1) = -rem(s_(k-1), s_k)``. Each polynomial is kept as coefficients and
    evaluated directly: the equivalent three-term recurrence is unstable where the roots cluster (tiny
    remainders).

    Returns:
        Sq (m + 1, m + 1, R): ``Sq[i, k]`` is the coefficient of ``x^i`` in ``s_k`` (degree m - k; zero above);
        reliable (R,): False where a remainder lost a degree (leading coefficient below ``1e3 eps`` of its largest)
        or vanished (repeated roots), i.e. where the count cannot be trusted (Sq may then hold inf/NaN). Zero
        and constant columns (no roots) count as reliable;
        count (R,) int16: the number of distinct real roots, ``V(-inf) - V(+inf)`` (0 for constant columns).
    """
    m = PT.shape[0] - 1
    dtype = PT.dtype
    Sq = PT.new_zeros(m + 1, m + 1, PT.shape[1])
    Sq[:, 0] = PT
    b = torch.mul(PT[1:], torch.arange(1, m + 1, dtype=dtype, device=PT.device)[:, None], out=Sq[:m, 1])
    a = PT
    big = [b.abs().amax(0)]  # max-abs coefficient of each s_k, k >= 1
    # no rescaling between steps (only signs matter, and the remainders of degree <= 10 stay far from
    # overflow unless the sequence degenerates, which the reliability test below catches)
    for k in range(2, m + 1):
        d = m + 1 - k  # degree of b; a has degree d + 1
        lc = b[d]
        q1 = a[d + 1] / lc
        t = torch.addcmul(a[1:d + 1], b[:d], q1, value=-1.0)  # coefficients 1..d of a - q1 z b
        r = torch.cat([a[:1], t[:-1]]).addcmul_(b[:d], t[d - 1] / lc, value=-1.0)  # remainder, degree d - 1
        a, b = b, torch.neg(r, out=Sq[:d, k])
        big.append(r.abs_().amax(0))
    # leading coefficients relative to each polynomial's largest: a degree drop or a vanished remainder (also
    # inf/NaN) is unreliable
    k = torch.arange(m + 1, device=PT.device)
    lead = Sq.reshape((m + 1) ** 2, -1).index_select(0, (m - k) * (m + 1) + k)  # (m + 1, R): Sq[m - k, k]
    reliable = (lead[1:].abs() > 1e3 * torch.finfo(dtype).eps * torch.stack(big)).all(0)
    # distinct real roots V(-inf) - V(+inf), from the signs of the leading coefficients alone
    neg = torch.signbit(lead)
    odd = (m - k) % 2 == 1
    count = _variations(neg ^ odd[:, None], 0) - _variations(neg, 0)
    const = big[0] == 0  # p' = 0: no roots
    return Sq, reliable | const, count.masked_fill_(const, 0)


def _powers(x: Tensor, m: int) -> Tensor:
    """``x^i``, i = 0..m, of points x (J, 1) as a (J, m + 1) matrix (products, not ``pow``: exact integer
    powers)."""
    cols = [torch.ones_like(x), x]
    for _ in range(2, m + 1):
        cols.append(cols[-1] * x)
    return torch.cat(cols[:m + 1], 1)


def _variations(neg: Tensor, dim: int) -> Tensor:
    """Sign variations (int16) along ``dim`` of the sign bits ``neg`` of a Sturm sequence."""
    a, b = neg.narrow(dim, 1, neg.shape[dim] - 1), neg.narrow(dim, 0, neg.shape[dim] - 1)
    return (a != b).view(torch.uint8).sum(dim, dtype=torch.uint8).to(torch.int16)


def _sturm_variations(SQ: Tensor, x: Tensor, rev: Tensor, odd: Tensor) -> Tensor:
    """Sign variations (J, K) of the Sturm sequences at points ``x`` (J, K), one column per sequence.

    ``SQ`` (m + 1, m + 1, K): coefficients (as in :func:`_sturm_sequence`) of the sequence, or, where ``rev``
    (K,), of its reversal (see :func:`_reversal`), whose value at x has the sign of ``x^(-d_k) s_k(b^2 / x)``:
    the sign of x to the (odd: ``odd`` (m + 1,)) degree d_k is applied, with -0 standing for the limit from below.
    A zero counts as positive (-0.0 as negative).
    """
    m = SQ.shape[0] - 1
    c = SQ.unsqueeze(2).unbind(0)  # per power: (m + 1 polynomials, 1, K)
    S = torch.addcmul(c[m - 1], c[m], x)
    for i in range(m - 2, -1, -1):
        S = torch.addcmul(c[i], S, x, out=S)
    neg = torch.signbit(S)
    neg ^= odd[:, None, None] & (torch.signbit(x) & rev)
    return _variations(neg, 0)


_REVERSAL: dict = {}


def _reversal(m: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Maps the flattened Sturm coefficients ``Sq.reshape((m + 1)^2, R)`` of one chart's polynomial to those of the
    reversals ``r_k(x) = x^d_k s_k(b^2 / x)`` (``d_k = m - k``; coefficient j: ``a_(d_k - j) b^(2 (d_k - j))``),
    whose signs give those of the sequence in the other chart (x there is ``b^2 / y``).

    Returns the row index ((m + 1)^2,), the scale ((m + 1)^2, 1) and ``odd`` (m + 1,) bool: d_k odd.
    """
    key = (m, dtype, device)
    out = _REVERSAL.get(key)
    if out is None:
        m1 = m + 1
        idx, scale = [], []
        for j in range(m1):
            for k in range(m1):
                d = m - k
                # beyond the degree: the zero coefficient Sq[m, k] (k >= 1 there)
                idx.append((d - j) * m1 + k if j <= d else m * m1 + k)
                scale.append(_CHART ** (2 * (d - j)) if j <= d else 0.0)
        out = (torch.tensor(idx, device=device), torch.tensor(scale, dtype=dtype, device=device)[:, None],
               torch.tensor([(m - k) % 2 == 1 for k in range(m1)], device=device))
        _REVERSAL[key] = out
    return out


def _newton_iter(C: tuple[Tensor, ...], x: Tensor, lo: Tensor, hi: Tensor,
                 zero: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One safeguarded Newton step for increasing-oriented brackets (g(lo) <= 0 <= g(hi)).

    ``C``: the m + 1 rows (2, V) of the stacked coefficients of g and g' (g' padded with a zero leading
    coefficient), so that one Horner pass evaluates both. ``zero``: a scalar 0 of the dtype.
    """
    m = len(C) - 1
    pd = torch.addcmul(C[m - 1], C[m], x)
    for i in range(m - 2, -1, -1):
        pd = torch.addcmul(C[i], pd, x, out=pd)
    v, dv = pd.unbind(0)
    up = torch.heaviside(v, zero)  # 1 where g(x) > 0: x becomes the upper end
    hi = torch.lerp(hi, x, up)
    lo = torch.lerp(x, lo, up)
    # a non-finite Newton point (p' = 0) fails the bracket test, hence is replaced by bisection
    xn = torch.addcdiv(x, v, dv, value=-1.0)
    return torch.where((xn >= lo) & (xn <= hi), xn, torch.lerp(lo, hi, 0.5)), lo, hi


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
    C = cT.new_empty(m + 1, 2, cT.shape[1])  # (fresh zeros would cost page faults)
    g = torch.mul(cT, s, out=C[:, 0])
    torch.mul(g[1:], torch.arange(1, m + 1, dtype=dtype, device=cT.device)[:, None], out=C[:-1, 1])
    C[m, 1] = 0.0
    glo, ghi = plo * s, phi * s
    frac = torch.nan_to_num(glo / (glo - ghi), nan=0.5).clamp_(0.0, 1.0)
    x = torch.addcmul(lo, hi - lo, frac)
    eps = torch.finfo(dtype).eps
    tol = eps ** (2.0 / 3.0)
    Cv = C.unbind(0)
    zero = x.new_zeros(())
    n_first = min(iters, max_iter)
    for k in range(n_first):
        if k == n_first - 1:
            x_prev = x
        x, lo, hi = _newton_iter(Cv, x, lo, hi, zero)
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
            xs, los, his = _newton_iter(Cs, xs, los, his, zero)
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


def _brackets(mask: Tensor, x: Tensor, p: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
    """(row, lo, hi, p(lo), p(hi)) of the cells flagged in ``mask`` (J, K) of the per-column grids x and p
    (J + 1, K); ``rows`` (K,): the chart row of each column."""
    K = mask.shape[1]
    pos = mask.reshape(-1).nonzero()[:, 0]
    xf, pf = x.reshape(-1), p.reshape(-1)
    return (rows.index_select(0, pos % K), xf.index_select(0, pos), xf.index_select(0, pos + K),
            pf.index_select(0, pos), pf.index_select(0, pos + K))


@torch.no_grad()
def real_roots_list(c: Tensor, grid: int = 8, fine: int = 8, subgrid: int = 8, levels: int = 6,
                    iters: int = 8, max_iter: int | None = None) -> RootList:
    """All real roots (roots at infinity included) of the rows of ``c`` (R, m + 1), as a flat list.

    Isolation by Sturm counts (one sequence per polynomial, see the module docstring): where the sign changes of p
    on a fine grid of both charts fall short of the number of distinct real roots, the cells holding two or more
    roots that the sign changes do not separate are refined; each isolated root is then found by bracketed Newton.

    Args:
        c: ascending coefficients (R, m + 1), m >= 1. Rows that are zero or not finite have no roots.
        grid: cells per chart with a Sturm count at the first level (even: z = 0 and z = infinity are grid points).
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
    if grid < 2 or grid % 2:
        raise ValueError(f"grid must be even and positive, got {grid}")
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
    # one Sturm sequence per polynomial, in its home chart: the one whose polynomial has the larger leading
    # coefficient (so that no root sits at the home chart's infinity)
    lead2 = PT[m].abs().reshape(n, 2)
    home = lead2[:, 1] > lead2[:, 0]  # True: chart w
    Sq, reliable, total = _sturm_sequence(torch.where(home, PT[:, 1::2], PT[:, 0::2]))
    Sq = Sq.reshape(m1 * m1, n)
    ridx, rscale, odd = _reversal(m, dtype, device)

    # level 0: the sign changes of p on the fine grid of both charts (z = 0 / infinity at the centre)
    G, F = grid, fine
    half = G * F // 2
    R = 2 * n
    xf = (torch.arange(G * F + 1, dtype=dtype, device=device) - half) * (_CHART / half)  # exact grid points
    Pw = _powers(xf[:, None], m)  # (G F + 1, m + 1)
    pf = Pw @ PT  # (G F + 1, 2 n)
    neg = torch.signbit(pf)
    change = neg[1:] != neg[:-1]  # (G F, 2 n)
    r0, j0 = change.t().nonzero().unbind(1)  # sorted by chart row: by problem, chart z first
    bad = (torch.bincount(r0 >> 1, minlength=n) < total) | ~reliable
    bidx = bad.nonzero()[:, 0]
    nb = bidx.numel()
    rows = r0.new_empty(0)
    if nb > 0:
        # Sturm counts on the coarse cells of both charts of the problems with fewer sign changes than roots (and
        # every coarse cell of those whose count cannot be trusted is split once, sign changes deciding there)
        rows_b = (2 * bidx[:, None] + torch.arange(2, device=device)).reshape(-1)  # (2 nb,) chart rows
        nsc = _gather_cols(change.view(torch.uint8), rows_b).view(G, F, 2 * nb).sum(1, dtype=torch.int16)
        Sqb = _gather_cols(Sq, bidx)
        xc = xf[::F]  # (G + 1,), 0 at index G / 2
        g2 = G // 2
        vd = (Pw[::F] @ Sqb.view(m1, m1 * nb)).view(G + 1, m1, nb)  # the home chart
        var_d = _variations(torch.signbit(vd), 1)
        xr = torch.cat([xc[:g2], xc.new_full((1,), -0.0), xc[g2:]])  # 0 twice: the limits from below and above
        vr = (_powers(xr[:, None], m) @ (Sqb.index_select(0, ridx) * rscale).view(m1, m1 * nb)).view(G + 2, m1, nb)
        var_r = _variations(torch.signbit(vr) ^ (torch.signbit(xr)[:, None, None] & odd[:, None]), 1)
        cnt_d = var_d[:-1] - var_d[1:]  # (G, nb)
        cnt_r = var_r[torch.cat([torch.arange(1, g2 + 1), torch.arange(g2 + 2, G + 2)]).to(device)] \
            - var_r[torch.cat([torch.arange(0, g2), torch.arange(g2 + 1, G + 1)]).to(device)]  # orientation reversed
        hb = home.index_select(0, bidx)
        cnt = torch.stack([torch.where(hb, cnt_r, cnt_d), torch.where(hb, cnt_d, cnt_r)], 2).view(G, 2 * nb)
        trust = reliable.index_select(0, bidx).repeat_interleave(2)
        refine = ((cnt >= 2) & (cnt > nsc)) | ~trust  # (G, 2 nb)
        # drop the level-0 sign changes inside refined cells
        ref_all = torch.zeros(G, R, dtype=torch.bool, device=device).index_copy_(1, rows_b, refine)
        keep = (~ref_all.view(-1).index_select(0, (j0 // F) * R + r0)).nonzero()[:, 0]
        r0, j0 = r0.index_select(0, keep), j0.index_select(0, keep)
        cj, ci = refine.nonzero().unbind(1)
        rows = rows_b.index_select(0, ci)
        lo = xc.index_select(0, cj)
        hi = torch.where(cj == g2 - 1, xc.new_full((), -0.0), xc.index_select(0, cj + 1))
        known = cnt[cj, ci]
        trust = trust.index_select(0, ci)
    pos = j0 * R + r0
    found = [(r0, xf.index_select(0, j0), xf.index_select(0, j0 + 1), pf.view(-1).index_select(0, pos),
              pf.view(-1).index_select(0, pos + R))]
    # later levels: each refined cell split into ``subgrid * fine`` cells, Sturm counts on every ``fine``-th point
    # (where the sign changes fall short of the cell's count)
    S = subgrid
    t = torch.linspace(0.0, 1.0, S * F + 1, dtype=dtype, device=device)[:, None]
    for level in range(1, levels):
        K = rows.numel()
        if K == 0:
            break
        x = torch.lerp(lo, hi, t)  # (S F + 1, K); keeps a -0 end
        pc = _gather_cols(PT, rows).unsqueeze(1).unbind(0)
        p = torch.addcmul(pc[m - 1], pc[m], x)
        for i in range(m - 2, -1, -1):
            p = torch.addcmul(pc[i], p, x, out=p)
        neg = torch.signbit(p)
        leaf = neg[1:] != neg[:-1]  # (S F, K)
        nxt = None
        if level < levels - 1:
            nsc = leaf.view(torch.uint8).view(S, F, K).sum(1, dtype=torch.int16)  # (S, K)
            chk = (trust & (known > nsc.sum(0, dtype=torch.int16))).nonzero()[:, 0]
            if chk.numel() > 0:
                rk = rows.index_select(0, chk)
                pk = rk >> 1
                rev = (rk & 1).bool() != home.index_select(0, pk)
                SQ = _gather_cols(Sq, pk)
                SQ = torch.where(rev, SQ.index_select(0, ridx) * rscale, SQ).view(m1, m1, -1)
                var = _sturm_variations(SQ, _gather_cols(x[::F], chk), rev, odd)  # (S + 1, Kc)
                cnt = (var[:-1] - var[1:]) * (1 - 2 * rev.to(torch.int16))
                si, sk = ((cnt >= 2) & (cnt > _gather_cols(nsc, chk))).nonzero().unbind(1)
                if si.numel() > 0:
                    col = chk.index_select(0, sk)
                    refined = torch.zeros(S, K, dtype=torch.bool, device=device)
                    refined[si, col] = True
                    leaf &= ~refined.repeat_interleave(F, 0)
                    xflat = x.view(-1)
                    nxt = (rows.index_select(0, col), xflat.index_select(0, si * F * K + col),
                           xflat.index_select(0, (si + 1) * F * K + col), cnt[si, sk])
        found.append(_brackets(leaf, x, p, rows))
        if nxt is None:
            break
        rows, lo, hi, known = nxt
        trust = torch.ones(rows.numel(), dtype=torch.bool, device=device)
    r_rows, blo, bhi, plo, phi = (torch.cat(v) for v in zip(*found)) if len(found) > 1 else found[0]
    r = _bracketed_newton(_gather_cols(PT, r_rows), blo, bhi, plo, phi, iters, max_iter)
    prob = r_rows >> 1
    # slots: the level-0 roots (sorted by problem) first, by rank; the later ones after them
    n0 = r0.numel()
    c0 = torch.bincount(prob[:n0], minlength=n)
    slot = torch.arange(prob.numel(), device=device)
    slot[:n0] -= (c0.cumsum(0) - c0).index_select(0, prob[:n0])
    if prob.numel() > n0:
        pl = prob[n0:]
        ps, perm = torch.sort(pl, stable=True)
        cl = torch.bincount(pl, minlength=n)
        rank = torch.empty_like(pl).index_copy_(0, perm, torch.arange(pl.numel(), device=device)
                                                - (cl.cumsum(0) - cl).index_select(0, ps))
        slot[n0:] = c0.index_select(0, pl) + rank
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
