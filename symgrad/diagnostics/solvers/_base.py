"""What every chi solver shares: one operator protocol, one solution type, one ``finish``.

A solver approximates ``X = A^-1 B`` for a block ``B`` of right-hand sides (rows of a
``(k, P)`` array), ``A = lambda I + G`` applied by a ``ChiOperator`` (``GaussNewtonBlocks``,
or any object with its interface: the benchmarks' exact spectral replica is one). A solver
is a frozen dataclass of its own knobs (``BlockLanczos``, ``CG``, ``Dense``); what it must
certify comes with each call as ``certify.Targets`` (rtol and which columns are which),
from which it builds its own stopping rule. It returns a ``ChiSolution``: the iterates,
their *explicit* residuals, the corrected Gram matrix of every pair of right-hand sides,
per right-hand side the energy error bound ``e`` that ``symgrad.diagnostics.certify``
turns into bounds and flags, and one ``result`` code that means the same for every
solver. ``finish`` computes all of that, so every solver is certified by the same code.
"""

from __future__ import annotations

import enum
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import Targets, quadrature_carry, roundoff_allowance


class ChiOperator(Protocol):
    """``A = lambda I + G`` on blocks of flat vectors ``(k, P)``, counting its products.

    The operator owns the damping and the count: ``products`` grows by k for every block
    of k vectors it multiplies, through ``__call__`` or inside ``loop``.
    """

    damping: float
    dtype: Any
    n_params: int
    products: int

    def __call__(self, block) -> jax.Array: ...

    def rounding(self) -> float:
        """An a-posteriori estimate of ``||fl(A z) - A z||`` for unit vectors z (absolute,
        cached): every bound adds ``rounding() * ||x||`` to a residual (``certify``)."""
        ...

    def loop(self, body: Callable, *args):
        """``body(product, *args) -> (outputs, products used)`` run as one jitted program with
        ``product`` the traced block product; adds the products used to ``products`` and
        returns the outputs. ``body`` must be a module-level function (it is a static
        argument of the compilation)."""
        ...


class Result(enum.Enum):
    """How a chi solve ended, the same for every solver."""

    CERTIFIED = "certified"  # every value the targets name is certified to rtol
    MAX_STEPS = "max_steps_reached"  # stopped at the solver's step limit before that
    STAGNATED = "stagnated"  # stopped because the bound no longer improved (a floor of rounding, a breakdown)
    NOT_CERTIFIED = "not_certified"  # ended otherwise (exact solve, invariant subspace, extensions spent) without it


class ChiSolution(NamedTuple):
    """The result of a chi solve of a block of k right-hand sides (solver-independent)."""

    solution: jax.Array  # (k, P) x_i ~ A^-1 b_i
    residual: jax.Array  # (k, P) b_i - A x_i, recomputed explicitly
    gram: np.ndarray  # (k, k) float64: b_i . x_j + x_i . r_j, symmetrised (error r_i^T A^-1 r_j)
    error_bound: np.ndarray  # (k,) e_i >= r_i^T A^-1 r_i: the bound every flag uses
    residual_bound: np.ndarray  # (k,) ||r_i||^2 / lambda (+ rounding allowance): rigorous in floating point
    residual_norm: np.ndarray  # (k,) ||r_i||_2
    residual_slack: np.ndarray  # (k,) bound on ||r_i - fl(r_i)||: the exact operator's residual against the computed one
    form_rounding: np.ndarray  # (k, k) bound on the rounding in ``gram``: its float64 forms, and the slack of the residuals
    iterations: np.ndarray  # (k,) int
    converged: np.ndarray  # (k,) bool: e_i <= rtol b_i^T A^-1 b_i (this right-hand side's quadratic form certified)
    ggn_products: int  # Gauss-Newton products evaluated, the final residuals included
    null_share: np.ndarray  # (k,) lambda ||x_i||^2 / b_i^T A^-1 b_i: the share of the chi norm from null(G)
    result: Result  # how the solve ended
    stats: dict[str, Any]  # solver-specific diagnostics (JSON-serialisable)


class ChiSolver(Protocol):
    """``solve(operator, rhs, targets) -> ChiSolution``; ``name`` is its ``--solver`` name."""

    name: str

    def solve(self, operator: ChiOperator, rhs, targets: Targets, *, progress=None) -> ChiSolution: ...


def device_block(operator, rows):
    """Host rows ``(k, P)`` as a block ``operator`` multiplies (its ``device_block``: padded and
    sharded over its devices; else one device array)."""
    move = getattr(operator, "device_block", None)
    return move(rows) if move is not None else jnp.asarray(rows, operator.dtype)


def host_width(operator) -> int:
    """The length of the host rows ``device_block`` takes: ``n_params`` less the padding of a
    sharded operator's layout."""
    layout = getattr(operator, "layout", None)
    return int(operator.n_params) - int(getattr(layout, "pad", 0))


def host_rows(operator, block) -> np.ndarray:
    """A block of ``operator``'s back on the host as ``(k, P)`` rows (its ``host_rows``)."""
    move = getattr(operator, "host_rows", None)
    return move(block) if move is not None else np.asarray(block)


def device_memory_bytes() -> int:
    """Memory of the first device: the accelerator's limit, or the host's RAM on the CPU."""
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _float64(a):
    """``a`` in float64 for a bilinear form: a device array on its device where x64 is on, else
    on the host (numpy), so that no long dot product is ever accumulated in float32. A host
    array stays on the host (the orchestration keeps its (N, P) arrays there)."""
    if jax.config.jax_enable_x64 and isinstance(a, jax.Array):
        return jnp.asarray(a, jnp.float64)
    return np.asarray(a, np.float64)


def _same_place(a, b):
    """Both in float64, on the device if both are there, else both on the host."""
    if isinstance(a, jax.Array) and isinstance(b, jax.Array):
        return _float64(a), _float64(b)
    return np.asarray(a, np.float64), np.asarray(b, np.float64)


# The bilinear forms are summed in two levels, dots of CHUNK terms and then the sum of those,
# so that their rounding is bounded by (gamma_C + gamma_{P/C}) |a|.|b| (any order within each
# level) rather than gamma_P |a|.|b|: about sqrt(P) eps instead of P eps.
FORM_PARTIALS = 1 << 22  # at most this many partial sums (k l P / C) held at once


def _two_level(a, b):
    """``a @ b.T`` summed in two levels; returns ``(value, C, number of chunks)``."""
    xp = jnp if isinstance(a, jax.Array) else np
    k, l, p = int(a.shape[0]), int(b.shape[0]), int(a.shape[1])
    chunks = max(1, min(int(np.sqrt(p)), FORM_PARTIALS // max(1, k * l)))
    size = -(-p // chunks)
    pad = chunks * size - p
    if pad:
        a, b = xp.pad(a, ((0, 0), (0, pad))), xp.pad(b, ((0, 0), (0, pad)))
    if xp is np:  # batched BLAS products of each level-1 slab: (chunks, k, l)
        partial = np.matmul(a.reshape(k, chunks, size).transpose(1, 0, 2), b.reshape(l, chunks, size).transpose(1, 2, 0))
        return partial.sum(axis=0), size, chunks
    partial = xp.einsum("kcj,lcj->klc", a.reshape(k, chunks, size), b.reshape(l, chunks, size))
    return np.asarray(partial.sum(axis=-1), np.float64), size, chunks


def row_norms(a) -> np.ndarray:
    """Euclidean norms of the rows of ``a``, accumulated in float64 (on the device where x64 is on)."""
    a = _float64(a)
    return np.asarray((jnp if isinstance(a, jax.Array) else np).linalg.norm(a, axis=-1), np.float64)


def _gamma(n: int) -> float:
    eps = float(np.finfo(np.float64).eps)
    return n * eps / (1 - n * eps)


def form_gamma(p: int) -> float:
    """The relative rounding bound of one two-level form of ``p`` terms (``bilinear_form``)."""
    chunks = max(1, int(np.sqrt(p)))
    g1, g2 = _gamma(-(-p // chunks)), _gamma(chunks)
    return g1 + g2 + g1 * g2


def bilinear_form(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``a_i . b_j`` for every pair of rows in float64, and a rigorous bound on its rounding:
    ``(gamma_C + gamma_{P/C} + gamma_C gamma_{P/C}) |a_i| . |b_j|`` for the two-level sum,
    ``|a|.|b|`` computed the same way and inflated by its own (one-signed) rounding."""
    a, b = _same_place(a, b)
    value, size, chunks = _two_level(a, b)
    mags, _, _ = _two_level(abs(a), abs(b))
    g1, g2 = _gamma(size), _gamma(chunks)
    gamma = g1 + g2 + g1 * g2
    return value, gamma * (1 + 2 * gamma) * mags


def corrected_gram(b, x, r) -> tuple[np.ndarray, np.ndarray]:
    """``b_i . x_j + x_i . r_j`` for every pair, symmetrised (its exact error is ``r_i^T A^-1
    r_j``), and the bound on the rounding of these float64 forms (``bilinear_form``)."""
    bx, bx_r = bilinear_form(b, x)
    xr, xr_r = bilinear_form(x, r)
    g = bx + xr
    rounding = bx_r + xr_r + np.finfo(np.float64).eps * np.abs(g)
    return 0.5 * (g + g.T), 0.5 * (rounding + rounding.T) + np.finfo(np.float64).eps * np.abs(g)


def euclidean_gram(a, b) -> np.ndarray:
    """``a_i . b_j`` for every pair of rows, accumulated in float64."""
    a, b = _same_place(a, b)
    return np.asarray(a @ b.T, np.float64)


def corrected_cross(b_a, x_a, r_b, x_b) -> tuple[np.ndarray, np.ndarray]:
    """``b_a,i . x_b,j + x_a,i . r_b,j`` between two separately solved blocks (error ``r_a,i^T
    A^-1 r_b,j``), and the bound on the rounding of these forms."""
    bx, bx_r = bilinear_form(b_a, x_b)
    xr, xr_r = bilinear_form(x_a, r_b)
    g = bx + xr
    return g, bx_r + xr_r + 2 * np.finfo(np.float64).eps * np.abs(g)


def null_space_share(damping: float, solution_sq_norm, quadratic_form) -> np.ndarray:
    """``lambda ||A^-1 b||^2 / b^T A^-1 b = -d ln <b, b>_chi / d ln lambda``.

    In the eigenbasis of G (eigenvalues theta, components c) it is
    ``sum c^2 lambda / (theta + lambda)^2 / sum c^2 / (theta + lambda)``: each direction's
    share of the chi norm weighted by ``lambda / (theta + lambda)``, 1 on null(G), 0 where the
    curvature dominates the damping. Near 1, ``<b, b>_chi`` grows as ``1 / lambda`` and
    cosines against the range of G scale like ``sqrt(lambda)`` (docs/overlap.md section 1).
    Needs only the solution.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(damping * np.asarray(solution_sq_norm) / np.asarray(quadratic_form), 0.0, 1.0)


def finish(operator, rhs, solution, targets: Targets, *, iterations, products_before: int, out_of_steps: bool,
           stagnated: bool = False, quadrature_bound=None, recursive_residual=None, quadrature_rounding=None,
           notes=(), stats=None) -> ChiSolution:
    """Explicit residuals, the corrected Gram matrix, the error bounds and the result code of a
    finished solve.

    Every solver ends here. The explicit residual ``r_i`` is computed with the operator as
    evaluated; the exact operator's residual differs from it by at most ``slack_i``: the
    rounding of the subtraction and the product (``certify.roundoff_allowance``) and the
    operator's own rounding ``delta ||x_i||`` (``operator.rounding()``, an a-posteriori
    estimate). Then ``e_i = (||r_i|| + slack_i)^2 / lambda`` (``||A^-1|| <= 1 / lambda``),
    unless a solver supplies a tighter ``quadrature_bound`` on ``s_i^T A^-1 s_i`` for its
    *recursive* residual ``s_i`` (valid for the computed operator); then ``e_i = min(residual
    bound, (sqrt(q_i c) + (||r_i - s_i|| + slack_i) / sqrt(lambda))^2)``, ``c`` carrying the
    quadrature from the computed operator to the exact one and the triangle inequality in the
    ``A^-1`` norm to the explicit residual (docs/overlap.md section 3). The quadrature is
    not used when the operator's rounding reaches ``lambda / 2`` (it proves nothing then);
    ``quadrature_rounding`` is the rounding of the operator the quadrature ran on, when that
    is not ``operator`` (a deflated solve runs on a Schur complement of it).
    ``form_rounding`` bounds the rounding of the float64 bilinear forms themselves
    (``bilinear_form``) and their use of the computed residuals: ``x_i . (r_j - fl(r_j))``
    is at most ``||x_i|| slack_j``.
    ``out_of_steps``: the solver stopped at its step limit; ``stagnated``: its bound stopped
    improving before the target.
    """
    lam = operator.damping
    delta = float(operator.rounding())
    b = jnp.asarray(rhs, operator.dtype)
    x = jnp.asarray(solution, operator.dtype)
    ax = operator(x)
    r = b - ax
    r_norm, b_norm, x_norm = row_norms(r), row_norms(b), row_norms(x)
    slack = roundoff_allowance(b_norm, row_norms(ax), operator.n_params, operator.dtype) + delta * x_norm
    residual_bound = (r_norm + slack) ** 2 / lam
    error_bound = residual_bound
    notes = list(notes)
    if quadrature_bound is not None:
        carry = quadrature_carry(lam, delta if quadrature_rounding is None else float(quadrature_rounding))
        if carry is None:
            notes.append(f"the operator's rounding {delta:.2g} is not below lambda / 2 = {lam / 2:.2g}: "
                         "Gauss-Radau bounds not used, values bounded by their residuals alone")
        else:
            drift = row_norms(r - jnp.asarray(recursive_residual, operator.dtype)) + slack
            q = np.asarray(quadrature_bound, np.float64)
            quad = (np.sqrt(np.maximum(q, 0.0) * carry) + drift / np.sqrt(lam)) ** 2
            error_bound = np.where(q >= 0, np.minimum(residual_bound, quad), residual_bound)
    k = b.shape[0]
    gram, rounding = corrected_gram(b, x, r)
    # The forms use the computed residuals: x_i . (r_j - fl(r_j)) is at most ||x_i|| slack_j.
    first_order = np.outer(x_norm, slack)
    rounding = rounding + 0.5 * (first_order + first_order.T)
    with np.errstate(divide="ignore", invalid="ignore"):
        converged = error_bound + np.diagonal(rounding) <= targets.rtol * np.abs(np.diagonal(gram))
    if targets.certified(gram, error_bound, rounding):
        result = Result.CERTIFIED
    elif stagnated:
        result = Result.STAGNATED
    else:
        result = Result.MAX_STEPS if out_of_steps else Result.NOT_CERTIFIED
    return ChiSolution(
        solution=x, residual=r, gram=gram, error_bound=error_bound,
        residual_bound=residual_bound, residual_norm=r_norm, residual_slack=slack, form_rounding=rounding,
        iterations=np.broadcast_to(np.asarray(iterations, np.int64), (k,)).copy(),
        converged=np.asarray(converged, bool),
        ggn_products=int(operator.products - products_before),
        null_share=null_space_share(lam, x_norm ** 2, np.diagonal(gram)),
        result=result,
        stats=dict(stats or {}, operator_rounding=delta, **({"notes": notes} if notes else {})),
    )
