"""Certification of chi values: error bounds, flags and stopping rules, in one place.

Every chi value is a bilinear form ``b_i^T A^-1 b_j`` with ``A = lambda I + G``, estimated
from approximate solutions ``x_i`` with explicit residuals ``r_i = b_i - A x_i`` by the
corrected estimate ``b_i . x_j + x_i . r_j``, whose error is exactly ``r_i^T A^-1 r_j``.
The one number that carries the accuracy of a right-hand side is an upper bound

    e_i >= r_i^T A^-1 r_i          (the squared energy norm of the error of x_i)

which a solver supplies (``||r_i||^2 / lambda``, or a Gauss-Radau quadrature bound; see
docs/overlap.md section 3). From it, and nothing else:

* entry ``(i, j)``: ``|error| <= sqrt(e_i e_j)`` (Cauchy-Schwarz in the ``A^-1`` inner product);
* quadratic form ``i``: error in ``[0, e_i]``;
* cosine and Frobenius-normalised overlaps: the worst case over the box of true values.

A value is certified when each of these, relative to its natural scale, is at most
``rtol`` (``FLAG_DEFINITION``). The stopping rules below ask the same question of the
iterates a solver holds, with a safety factor, so that "stop" and "certified" can never
disagree by more than that factor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

FLAG_DEFINITION = (
    "tolerance_not_met(g,i) is true unless: bound(cosine) <= rtol, bound(frobenius) <= rtol, "
    "chi_uu_bound/chi_uu <= rtol, chi_vv_bound/chi_vv <= rtol and, for every j, "
    "overlap_matrix_chi_bound[g,i,j] / sqrt(chi_uu[g,i] chi_vv[j]) <= rtol"
)

# A stopping rule is met when every value would be certified at SAFETY * rtol: the margin
# absorbs the difference between the iterates' estimates and the final corrected ones.
DEFAULT_SAFETY = 0.5
# The baseline CG (residual rule) keeps its historical margin: the residual bound of a
# product of two solves needs each solve ten times tighter than rtol.
CG_SAFETY = 0.1
# When the v-solves serve elements solved later (in other right-hand-side chunks), they are
# driven this much further, so that the later u-solves alone can certify every entry.
V_AHEAD = 0.01


class ElementCertificate(NamedTuple):
    """Bounds and flags of one group element's chi values (float64, numpy)."""

    matrix_bound: np.ndarray  # (N, N) bound on |error| of M_ij
    matrix_flag: np.ndarray  # (N, N) entry bound above rtol (Cauchy-Schwarz scale)
    cosine: np.ndarray  # (N,)
    cosine_bound: np.ndarray
    frobenius: np.ndarray
    frobenius_bound: np.ndarray
    not_met: np.ndarray  # (N,) the flag of FLAG_DEFINITION
    worst: float  # the largest relative bound (compare with rtol; inf while a ratio is unbounded)


def certify_element(m, uu, vv, e_u, e_v, rtol: float, rounding=None, *, rows=None,
                    frobenius_norm=None) -> ElementCertificate:
    """Certify ``M_ij = <u_i, v_j>_chi``, ``<u_i, u_i>_chi`` and ``<v_j, v_j>_chi`` of one element.

    ``m`` (N, N), ``uu`` (N,), ``vv`` (N,) are the estimates; ``e_u``, ``e_v`` the energy
    error bounds of the u- and v-solves; ``rounding = (rho_m, rho_u, rho_v)`` the bounds on
    the rounding of the bilinear forms that computed ``m``, ``uu`` and ``vv``
    (``form_rounding``), added to every bound (None: not counted, as in a stopping rule).
    ``rows``: ``m``, ``uu`` and ``e_u`` hold only these rows of the element (a chunk that
    holds part of it; for a stopping rule): the cosines pair row i with v_i, the Frobenius
    norm is ``frobenius_norm`` (of the whole element's estimate) and the rows' share of its
    error bound is scaled up to N rows.
    """
    m = np.asarray(m, np.float64)
    uu, vv = np.asarray(uu, np.float64), np.asarray(vv, np.float64)
    rho_m, rho_u, rho_v = (0.0, 0.0, 0.0) if rounding is None else (np.asarray(a, np.float64) for a in rounding)
    e_u, e_v = np.asarray(e_u, np.float64), np.asarray(e_v, np.float64)
    mb = np.sqrt(np.outer(e_u, e_v)) + rho_m
    e_u, e_v = e_u + rho_u, e_v + rho_v  # the quadratic forms' bounds
    at = np.arange(len(uu)) if rows is None else np.asarray(rows)
    diag, diag_b = m[np.arange(len(uu)), at], mb[np.arange(len(uu)), at]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = mb / np.sqrt(np.abs(uu)[:, None] * np.abs(vv)[None, :])
        uu_rel, vv_rel = e_u / np.abs(uu), e_v / np.abs(vv)
    matrix_flag = ~(rel <= rtol)  # NaN counts as not met
    cos, cos_b = ratio_interval_bound(diag, diag_b, [uu, vv[at]], [e_u, e_v[at]], sqrt_den=True)
    fro_norm = np.full_like(uu, np.linalg.norm(m) if frobenius_norm is None else frobenius_norm)
    # ||B||_F bounds | ||M_true||_F - ||M||_F |
    fro_err = np.full_like(uu, np.linalg.norm(mb) * np.sqrt(len(vv) / len(uu)))
    fro, fro_b = ratio_interval_bound(diag, diag_b, [fro_norm], [fro_err], sqrt_den=False)
    not_met = (
        ~(cos_b <= rtol) | ~(fro_b <= rtol) | ~(uu_rel <= rtol) | ~(vv_rel[at] <= rtol)
        | matrix_flag.any(axis=-1) | ~np.isfinite(cos) | ~np.isfinite(fro)
    )
    parts = (cos_b, fro_b, uu_rel, vv_rel, rel)
    worst = max(float(np.max(np.where(np.isnan(p), np.inf, p))) for p in parts)
    return ElementCertificate(mb, matrix_flag, cos, cos_b, fro, fro_b, not_met, worst)


def ratio_interval_bound(num, num_bound, den_parts, den_bounds, *, sqrt_den):
    """Worst deviation of ``num / f(den)`` over the box of true values.

    ``num`` lies in ``[num - num_bound, num + num_bound]`` and each denominator part in
    ``[d - b, d + b]``; the denominator is the product of the parts (``sqrt`` of it when
    ``sqrt_den``). The ratio is monotone in every variable on the box (denominator > 0),
    so its extremes are at corners. Infinite where a denominator interval reaches 0.
    """
    num = np.asarray(num, dtype=np.float64)
    num_bound = np.asarray(num_bound, dtype=np.float64)
    den = np.ones_like(num)
    for d in den_parts:
        den = den * np.asarray(d, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = num / (np.sqrt(den) if sqrt_den else den)
    worst = np.zeros_like(value)
    lows = [np.asarray(d) - np.asarray(b) for d, b in zip(den_parts, den_bounds)]
    highs = [np.asarray(d) + np.asarray(b) for d, b in zip(den_parts, den_bounds)]
    positive = np.ones(value.shape, dtype=bool)
    for lo in lows:
        positive &= lo > 0
    n_parts = len(den_parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        for s_num in (-1.0, 1.0):
            n = num + s_num * num_bound
            for corner in range(2**n_parts):
                d = np.ones_like(num)
                for k in range(n_parts):
                    d = d * (highs[k] if (corner >> k) & 1 else lows[k])
                c = n / (np.sqrt(d) if sqrt_den else d)
                worst = np.maximum(worst, np.abs(c - value))
    return value, np.where(positive & np.isfinite(worst), worst, np.inf)


# The operator's rounding is estimated a posteriori (``linearity_rounding``) and multiplied
# by this before it enters a bound.
ROUNDING_SAFETY = 10.0
ROUNDING_PAIRS = 4


def linearity_rounding(apply, n_params: int, dtype, seed: int = 0) -> tuple[float, int]:
    """An a-posteriori estimate of the rounding of a linear operator's products, per unit vector.

    For random unit vectors z, w: ``||A(z + w) - A z - A w|| / 2`` (zero in exact arithmetic;
    three roundings in floating point) and ``sqrt(P) |z . A w - w . A z|`` (the symmetry
    defect, zero for a symmetric operator), the larger of the two over ``ROUNDING_PAIRS``
    pairs, times ``ROUNDING_SAFETY``. An estimate, not a proof: docs/overlap.md section 3.
    ``apply`` maps ``(k, P)`` blocks. Returns ``(estimate, products used)``.
    """
    import jax.numpy as jnp

    k = ROUNDING_PAIRS
    z = np.random.default_rng(seed).normal(size=(2 * k, n_params))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    zs, ws = z[:k], z[k:]
    block = np.concatenate([zs, ws, zs + ws])
    out = np.asarray(apply(jnp.asarray(block, dtype)), np.float64)
    block = np.asarray(jnp.asarray(block, dtype), np.float64)  # what was multiplied
    az, aw, azw = out[:k], out[k:2 * k], out[2 * k:]
    linear = np.linalg.norm(azw - az - aw, axis=1) / 2
    symmetry = np.abs(np.einsum("ip,ip->i", block[:k], aw) - np.einsum("ip,ip->i", block[k:2 * k], az))
    return ROUNDING_SAFETY * float(max(linear.max(), np.sqrt(n_params) * symmetry.max())), 3 * k


def quadrature_carry(damping: float, rounding: float) -> float | None:
    """The factor that carries a Gauss-Radau bound ``s^T Ac^-1 s`` of the computed operator
    ``Ac`` to the exact ``A``: ``||Ac - A|| <= delta`` gives ``A >= (1 - delta / (lambda -
    delta)) Ac``, so ``s^T A^-1 s <= s^T Ac^-1 s (lambda - delta) / (lambda - 2 delta)``.
    None when ``delta >= lambda / 2``: then the quadrature proves nothing."""
    if not rounding < damping / 2:
        return None
    return (damping - rounding) / (damping - 2 * rounding)


MU_FRACTION = 0.99


def radau_shift(damping: float, rounding: float) -> float:
    """The Gauss-Radau node ``mu``: below the smallest eigenvalue of the computed operator,
    which is at least ``lambda - delta`` (G is PSD), with a margin (``delta`` more, and at
    least 1% of lambda) that keeps ``T - mu I`` well conditioned when Ritz values converge
    to lambda (null(G))."""
    return min(MU_FRACTION * damping, damping - 2 * rounding)


def roundoff_allowance(rhs_norm, residual_norm_of_ay, n_params: int, dtype) -> np.ndarray:
    """An allowance for floating-point error in the computed residual ``fl(b - A y)``.

    ``sqrt(P) eps (||b|| + ||A y||)``: a model of the accumulated rounding of the operator
    application, added to residual norms before they enter a bound. Not rigorous
    (docs/overlap.md says so); negligible in float64, and it keeps float32 honest, where
    a computed residual can be smaller than its own rounding error.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps)
    return math.sqrt(n_params) * eps * (np.asarray(rhs_norm, np.float64) + np.asarray(residual_norm_of_ay, np.float64))


# ----------------------------------------------------------------------------- stopping rules


class SolvedV(NamedTuple):
    """The v side fixed by an earlier chunk, against which a later chunk's u's are certified."""

    vv: np.ndarray  # (N,)
    e_v: np.ndarray  # (N,)
    cross: dict  # element index -> (N, N) estimate of <u_i^g, v_j>_chi (u . w), for stopping only
    residual_norm: np.ndarray  # (N,) ||r_v|| with its rounding allowance (steers the baseline CG's u-solves)


class EnergyStopping:
    """Stop when every right-hand side's relative energy error is below ``safety * rtol``.

    The rule for a plain ``chi_solve``: it certifies every quadratic form, and therefore
    every entry on the Cauchy-Schwarz scale, of the block.
    """

    def __init__(self, rtol: float, safety: float = DEFAULT_SAFETY):
        self.rtol, self.safety = float(rtol), float(safety)

    def _worst(self, gram, e) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.asarray(e) / np.abs(np.diagonal(np.asarray(gram)))
        return float(np.max(np.where(np.isfinite(rel), rel, np.inf)))

    def __call__(self, gram, e, rounding=None):
        if rounding is not None:
            e = np.asarray(e) + np.diagonal(np.asarray(rounding))
        worst = self._worst(gram, e) / (self.safety * self.rtol)
        return worst <= 1.0, worst

    def certified(self, gram, e, rounding=None) -> bool:
        if rounding is not None:
            e = np.asarray(e) + np.diagonal(np.asarray(rounding))
        return self._worst(gram, e) <= self.rtol


class OverlapStopping:
    """Stop a chunk of overlap solves when every value it decides is certified at ``safety * rtol``.

    ``v_columns`` are the chunk's columns holding ``v_0..v_{N-1}`` (None when the v's were
    solved in an earlier chunk: then ``solved_v``); ``element_columns[k]`` the columns of
    ``u_0^g..u_{N-1}^g`` of element k (the v columns themselves for an element whose
    gradients equal v). With ``v_ahead`` (later chunks will need these v's) the v's must
    also reach ``V_AHEAD * safety * rtol`` relative energy error before the chunk stops.
    """

    def __init__(self, v_columns, element_columns: dict, rtol: float, *, safety: float = DEFAULT_SAFETY,
                 solved_v: SolvedV | None = None, v_ahead: bool = False, element_rows: dict | None = None):
        if v_columns is None and solved_v is None:
            raise ValueError("a chunk without the v's needs solved_v")
        self.v_columns = None if v_columns is None else list(v_columns)
        self.element_columns = {k: list(c) for k, c in element_columns.items()}
        self.element_rows = dict(element_rows or {})  # element -> its rows here, when not all (solved_v only)
        self.rtol, self.safety = float(rtol), float(safety)
        self.solved_v = solved_v
        self.v_ahead = bool(v_ahead)

    def _worst(self, gram, e, target: float, v_goal: float | None, rounding=None) -> float:
        gram, e = np.asarray(gram, np.float64), np.asarray(e, np.float64)
        quad = np.diagonal(gram)
        v = self.v_columns
        vv, e_v = (quad[v], e[v]) if v is not None else (self.solved_v.vv, self.solved_v.e_v)
        rho = np.zeros_like(gram) if rounding is None else np.asarray(rounding, np.float64)
        rho_d = np.diagonal(rho)
        worst = 0.0
        for k, cols in self.element_columns.items():
            rows, fro = self.element_rows.get(k), None
            if v is not None:
                m = gram[np.ix_(cols, v)]
            else:
                m = self.solved_v.cross[k]
                if rows is not None:
                    m, fro = m[list(rows)], float(np.linalg.norm(m))
            parts = (rho[np.ix_(cols, v)] if v is not None else 0.0, rho_d[cols], rho_d[v] if v is not None else 0.0)
            cert = certify_element(m, quad[cols], vv, e[cols], e_v, target, parts, rows=rows, frobenius_norm=fro)
            worst = max(worst, cert.worst / target)
        if v is not None and v_goal is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = e_v / np.abs(vv)
            worst = max(worst, float(np.max(np.where(np.isfinite(rel), rel, np.inf))) / v_goal)
        return worst

    def __call__(self, gram, e, rounding=None):
        """``rounding``: an estimate of the rounding the final forms will carry (as ``certified``
        counts it), so that the rule and the final certificate weigh it alike."""
        target = self.safety * self.rtol
        v_goal = V_AHEAD * target if self.v_ahead else (target if not self.element_columns else None)
        worst = self._worst(gram, e, target, v_goal, rounding)
        return worst <= 1.0, worst

    def certified(self, gram, e, rounding=None) -> bool:
        """Every value certified at rtol itself, the rounding of its forms (``form_rounding``) counted."""
        v_goal = self.rtol if not self.element_columns else None
        if v_goal is not None and rounding is not None:
            e = np.asarray(e) + np.diagonal(np.asarray(rounding))
        return self._worst(gram, e, self.rtol, v_goal, rounding) <= 1.0


class Targets(NamedTuple):
    """What one chi solve must certify to ``rtol``; each solver builds its stopping rule from it.

    No columns named: every quadratic form of the block (``EnergyStopping``, as in
    ``chi_solve``). Otherwise the overlap values of one right-hand-side chunk: the columns
    of the v's (or the ``solved_v`` of an earlier chunk) and of each element's u's, as in
    ``OverlapStopping``.
    """

    rtol: float
    v_columns: tuple | None = None
    element_columns: dict | None = None
    solved_v: SolvedV | None = None
    v_ahead: bool = False
    element_rows: dict | None = None  # element -> the rows of its u's in this chunk, when not all

    def stopping(self, safety: float):
        """The rule a solver stops on: every value certified at ``safety * rtol``."""
        if self.v_columns is None and self.element_columns is None:
            return EnergyStopping(self.rtol, safety)
        return OverlapStopping(self.v_columns, self.element_columns or {}, self.rtol, safety=safety,
                               solved_v=self.solved_v, v_ahead=self.v_ahead, element_rows=self.element_rows)

    def certified(self, gram, e, rounding=None) -> bool:
        """Whether every value these targets name is certified at ``rtol`` itself."""
        return bool(self.stopping(1.0).certified(gram, e, rounding))

    def residual_caps(self, k: int, damping: float, safety: float):
        """Absolute residual caps ``(k,)`` of a chunk of u-solves against solved v's, for a
        residual-rule solver (``frobenius_residual_cap``); None when the v's are in the chunk."""
        if self.solved_v is None:
            return None
        caps = np.full(k, np.inf)
        n = len(self.solved_v.vv)
        for element, cols in (self.element_columns or {}).items():
            cap = frobenius_residual_cap(float(np.linalg.norm(self.solved_v.cross[element])), n,
                                         self.solved_v.residual_norm, self.rtol, damping, safety)
            caps[list(cols)] = np.inf if cap is None else cap
        return caps


# ----------------------------------------------------------------------------- baseline CG rule


def energy_residual_eta(rtol: float, damping: float, safety: float = CG_SAFETY) -> float:
    """The baseline CG rule ``||r||^2 <= eta b^T y``, ``eta = safety rtol lambda``.

    ``b^T y`` increases to ``b^T chi b`` along CG from 0, so the rule gives
    ``||r||^2 / lambda <= safety rtol b^T chi b``: each solve's residual bound ``e`` is then
    ``safety rtol`` relative to its quadratic form (docs/overlap.md section 2).
    """
    return float(safety) * float(rtol) * float(damping)


def frobenius_residual_cap(fro: float, n: int, r_v_norms, rtol: float, damping: float, safety: float = CG_SAFETY):
    """Absolute residual cap for the baseline's u-solves that also certifies the Frobenius overlap.

    The residual bound matrix is ``||r_ui|| ||r_vj|| / lambda``, of Frobenius norm
    ``||r_u|| ||r_v|| / lambda``; capping every one of the ``n`` ``||r_ui|| <= safety rtol
    lambda F / (sqrt(n) ||r_v||)`` with ``F = ||U W^T||_F`` (no u-solve needed) keeps it below
    ``safety rtol ||M||_F``. Only steers the solver; the reported bounds stay rigorous regardless.
    """
    rv = np.linalg.norm(r_v_norms)
    if not rv > 0:
        return None
    cap = safety * rtol * damping * fro / (np.sqrt(n) * rv)
    # A non-finite gradient (NaN cap) or orthogonal blocks (zero cap) would make CG run to
    # its limit for nothing; fall back to the energy rule (the flags stay rigorous).
    return cap if np.isfinite(cap) and cap > 0 else None
