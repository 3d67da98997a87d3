"""What every chi solver shares: one settings object, one solution type, one protocol.

A solver approximates ``X = A^-1 B`` for a block ``B`` of right-hand sides (rows of a
``(k, P)`` array), ``A = lambda I + G`` applied by ``GaussNewtonBlocks``. It returns a
``ChiSolution``: the iterates, their *explicit* residuals, the corrected Gram matrix of
every pair of right-hand sides and, per right-hand side, the energy error bound ``e`` that
``symgrad.diagnostics.certify`` turns into bounds and flags. ``finish`` computes the parts
that do not depend on the method, so that every solver is certified by the same code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from symgrad.diagnostics.certify import roundoff_allowance
from symgrad.names import DEFAULT_MAX_ITERATIONS, DEFAULT_RTOL


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How a chi solve runs; each solver reads the fields it needs.

    ``max_iterations``: CG steps per right-hand side (``cg``), block Lanczos steps
    (``block``). ``safety``: the stopping margin (``None``: the solver's default).
    ``basis_memory``: bytes of Lanczos vectors kept for reorthogonalisation (``block``;
    ``None``: a quarter of the device or host memory). ``rank_tol``: directions of a block
    below this fraction of the operator norm are deflated (``block``). ``dense_max_params``:
    the largest model the ``dense`` reference forms G for.
    """

    damping: float
    rtol: float = DEFAULT_RTOL
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    safety: float | None = None
    basis_memory: int | None = None
    rank_tol: float = 1e-12
    dense_max_params: int = 8_000


class ChiSolution(NamedTuple):
    """The result of a chi solve of a block of k right-hand sides (solver-independent)."""

    solution: jax.Array  # (k, P) x_i ~ A^-1 b_i
    residual: jax.Array  # (k, P) b_i - A x_i, recomputed explicitly
    gram: np.ndarray  # (k, k) float64: b_i . x_j + x_i . r_j, symmetrised (error r_i^T A^-1 r_j)
    error_bound: np.ndarray  # (k,) e_i >= r_i^T A^-1 r_i: the bound every flag uses
    residual_bound: np.ndarray  # (k,) ||r_i||^2 / lambda (+ rounding allowance): rigorous in floating point
    residual_norm: np.ndarray  # (k,) ||r_i||_2
    iterations: np.ndarray  # (k,) int
    converged: np.ndarray  # (k,) bool: the solver's stopping rule held at the end
    ggn_products: int  # Gauss-Newton products evaluated, the final residuals included
    null_share: np.ndarray  # (k,) lambda ||x_i||^2 / b_i^T A^-1 b_i: the share of the chi norm from null(G)
    stats: dict[str, Any]  # solver-specific diagnostics (JSON-serialisable)


class StoppingRule(Protocol):
    """``rule(gram, e) -> (stop, worst)`` at the stopping margin; ``certified`` at rtol itself."""

    def __call__(self, gram, e) -> tuple[bool, float]: ...

    def certified(self, gram, e) -> bool: ...


class ChiSolver(Protocol):
    """``solve(operator, rhs, stop) -> ChiSolution``; ``residual_cap`` steers residual-rule solvers."""

    name: str
    settings: SolverSettings

    def solve(self, operator, rhs, stop: StoppingRule, *, residual_cap=None, progress=None) -> ChiSolution: ...


class SolverBase:
    """What every ``ChiSolver`` shares: it is made from one ``SolverSettings``."""

    name: str

    def __init__(self, settings: SolverSettings):
        self.settings = settings


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


def _gram_dtype(dtype):
    # Dot products of P terms in float64 whatever the working precision: their rounding is
    # not part of any bound.
    return jnp.float64 if jax.config.jax_enable_x64 else dtype


@jax.jit
def _pair_gram(b, x, r):
    g = b @ x.T + x @ r.T
    return 0.5 * (g + g.T)


def corrected_gram(b, x, r) -> np.ndarray:
    """``b_i . x_j + x_i . r_j`` for every pair, symmetrised; its exact error is ``r_i^T A^-1 r_j``."""
    dt = _gram_dtype(x.dtype)
    return np.asarray(_pair_gram(*(jnp.asarray(a, dt) for a in (b, x, r))), np.float64)


def euclidean_gram(a, b) -> np.ndarray:
    """``a_i . b_j`` for every pair of rows, accumulated in float64 where x64 allows."""
    dt = _gram_dtype(jnp.asarray(a).dtype)
    return np.asarray(jnp.asarray(a, dt) @ jnp.asarray(b, dt).T, np.float64)


def corrected_cross(b_a, x_a, r_b, x_b) -> np.ndarray:
    """``b_a,i . x_b,j + x_a,i . r_b,j`` between two separately solved blocks (error ``r_a,i^T A^-1 r_b,j``)."""
    dt = _gram_dtype(x_a.dtype)
    b_a, x_a, r_b, x_b = (jnp.asarray(a, dt) for a in (b_a, x_a, r_b, x_b))
    return np.asarray(b_a @ x_b.T + x_a @ r_b.T, np.float64)


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


def finish(operator, rhs, solution, *, iterations, converged, products_before: int,
           quadrature_bound=None, recursive_residual=None, stats=None) -> ChiSolution:
    """Explicit residuals, the corrected Gram matrix and the error bounds of a finished solve.

    Every solver ends here. ``e_i = ||r_i||^2 / lambda`` (``||A^-1|| <= 1 / lambda``) unless
    a solver supplies a tighter ``quadrature_bound`` on ``s_i^T A^-1 s_i`` for its
    *recursive* residual ``s_i``; then ``e_i = min(||r||^2 / lambda, (sqrt(q_i) + ||r_i - s_i|| /
    sqrt(lambda))^2)``, the triangle inequality in the ``A^-1`` norm carrying the bound over
    to the explicit residual (docs/overlap.md section 3).
    """
    lam = operator.damping
    b = jnp.asarray(rhs, operator.dtype)
    x = jnp.asarray(solution, operator.dtype)
    ax = operator(x)
    r = b - ax
    dt = _gram_dtype(operator.dtype)
    norms = lambda a: np.asarray(jnp.linalg.norm(jnp.asarray(a, dt), axis=-1), np.float64)  # noqa: E731
    r_norm = norms(r)
    slack = roundoff_allowance(norms(b), norms(ax), operator.n_params, operator.dtype)
    residual_bound = (r_norm + slack) ** 2 / lam
    error_bound = residual_bound
    if quadrature_bound is not None:
        drift = norms(r - jnp.asarray(recursive_residual, operator.dtype)) + slack
        quad = (np.sqrt(np.maximum(np.asarray(quadrature_bound, np.float64), 0.0)) + drift / np.sqrt(lam)) ** 2
        error_bound = np.minimum(residual_bound, quad)
    k = b.shape[0]
    gram = corrected_gram(b, x, r)
    return ChiSolution(
        solution=x, residual=r, gram=gram, error_bound=error_bound,
        residual_bound=residual_bound, residual_norm=r_norm,
        iterations=np.broadcast_to(np.asarray(iterations, np.int64), (k,)).copy(),
        converged=np.broadcast_to(np.asarray(converged, bool), (k,)).copy(),
        ggn_products=int(operator.products - products_before),
        null_share=null_space_share(lam, norms(x) ** 2, np.diagonal(gram)),
        stats=dict(stats or {}),
    )
