"""Finite-volume solver for 2-D compressible Euler on the periodic unit square.

Second-order MUSCL-HLLC, SSP Runge-Kutta, adaptive CFL time steps; pure JAX, jit-compiled and
vmapped over trajectories. States are ``(..., nx, ny, 4)`` conservative ``(rho, m_x, m_y, E)``.
See ``docs/solver.md`` for the numerics and ``docs/initial-conditions.md`` for the families.
"""

from symgrad.euler import conversions as conversions
from symgrad.euler import initial as initial
from symgrad.euler._config import EulerConfig as EulerConfig
from symgrad.euler._flux import hllc_flux_x as hllc_flux_x
from symgrad.euler.galilean import (
    boost_defect as boost_defect,
    boosted_solves as boosted_solves,
    observed_order as observed_order,
)
from symgrad.euler._solver import (
    SolveFailure as SolveFailure,
    SolveResult as SolveResult,
    describe_failures as describe_failures,
    max_stable_dt as max_stable_dt,
    physical_mask as physical_mask,
    solve as solve,
    step as step,
    tendency as tendency,
)
from symgrad.euler.conversions import (
    conservative_to_primitive as conservative_to_primitive,
    primitive_to_conservative as primitive_to_conservative,
)
from symgrad.euler.initial import (
    FAMILIES as FAMILIES,
    CRPConfig as CRPConfig,
    RPConfig as RPConfig,
    RPUIConfig as RPUIConfig,
    default_config as default_initial_config,
    sample_initial as sample_initial,
)

__all__ = [
    "CRPConfig",
    "EulerConfig",
    "FAMILIES",
    "RPConfig",
    "RPUIConfig",
    "SolveFailure",
    "SolveResult",
    "boost_defect",
    "boosted_solves",
    "conservative_to_primitive",
    "conversions",
    "default_initial_config",
    "describe_failures",
    "hllc_flux_x",
    "initial",
    "max_stable_dt",
    "observed_order",
    "physical_mask",
    "primitive_to_conservative",
    "sample_initial",
    "solve",
    "step",
    "tendency",
]
