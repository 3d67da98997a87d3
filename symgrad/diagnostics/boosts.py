"""What a result of a Galilean boost group carries beside the model's numbers (docs/groups.md).

- The boost speeds against the data's velocities: on a coarse grid the smallest boost that is
  exact on the grid (one cell per step, ``c = dx / dt``) can exceed every velocity the model
  was trained on. ``boost_speed_ratio[element] = |c| / max |u_axis|`` over the measured states
  says which elements ask the model to extrapolate (ratio > 1).
- The data's own defect (:func:`data_defect`): the finite-volume scheme that made the data is
  not exactly Galilean invariant. On the very transitions measured, with the model's SMSE
  scales, ``data_defect[g, i] = SMSE(S(B_c x_i), T_{c dt} B_c S(x_i))`` for the data's
  solver ``S`` over the data's time step: the equivariance error of the data's own solver,
  the floor below which a model of that data cannot be asked to go.
"""

from __future__ import annotations

import numpy as np

from symgrad.errors import SymgradError
from symgrad.groups import Group

#: The result variable of the data's own defect.
DEFECT = "data_defect"
DEFECT_LONG_NAME = "the data's own defect SMSE(S(g x), g' S(x)) of the data's solver S over one step (the floor)"
SMSE_NOT_INVARIANT = ("SMSE is not invariant under this group (scaling multiplies it by a^2, a boost adds rho c "
                      "to the momentum and m.c + rho |c|^2/2 to the energy): errors of different elements are "
                      "not on one scale")


def boost_axis(group: Group) -> str | None:
    """``"x"`` or ``"y"`` for a boost group (``symgrad.groups.boosts``), else None."""
    return group.name[-1] if group.name in ("boost-x", "boost-y") else None


def group_context(group: Group, x, y) -> tuple[dict, dict]:
    """``(data variables, attributes)`` a result of ``group`` carries about the group itself:
    whether SMSE is invariant, and for boosts the shifts and the speeds against the data's
    velocity spread along the boost (over the states ``x`` and ``y``)."""
    attrs = {"smse_invariant": int(bool(group.invariant_loss))}
    if not group.invariant_loss:
        attrs["smse_invariance_note"] = SMSE_NOT_INVARIANT
    axis = boost_axis(group)
    if axis is None:
        return {}, attrs
    channel = 1 if axis == "x" else 2
    states = np.concatenate([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    velocity = states[..., channel] / states[..., 0]
    v_max, v_std = float(np.max(np.abs(velocity))), float(np.std(velocity))
    speeds = np.abs(np.asarray(group.elements, np.float64))
    shifts = np.asarray(dict(group.element_attrs)["shift_cells"], np.int32)
    attrs.update(data_velocity_max=v_max, data_velocity_std=v_std, boost_axis=axis)
    data_vars = {
        "boost_shift": (("element",), shifts, {"long_name": f"cells the boosted flow moves along {axis} per time step",
                                               "units": "1"}),
        "boost_speed_ratio": (("element",), speeds / v_max if v_max > 0 else np.full(speeds.shape, np.inf), {
            "long_name": f"boost speed |c| over the largest |velocity| along {axis} in the measured states "
                         "(above 1: outside the data's velocities)", "units": "1"}),
    }
    return data_vars, attrs


def data_defect(group: Group, x, sigma, time_step: float, config=None) -> np.ndarray:
    """``(element, sample)``: ``SMSE(S(g.x_i), g'.S(x_i))`` for the data's solver ``S`` (an
    ``EulerConfig``, the data file's settings) over ``time_step``, ``g'`` the element's action
    on targets (``Group.target``). Computed in float64."""
    import jax
    import jax.numpy as jnp

    from symgrad.euler import EulerConfig, describe_failures, solve
    from symgrad.loss import smse

    config = EulerConfig() if config is None else config
    if not (np.isfinite(time_step) and time_step > 0):
        raise SymgradError(f"the data's time step must be > 0, got {time_step!r}")
    with jax.enable_x64(True):
        x = jnp.asarray(np.asarray(x), jnp.float64)
        n = x.shape[0]
        inputs = jnp.concatenate([x] + [group.act(g, x) for g in group.elements])
        result = solve(inputs, [float(time_step)], config)
        if not bool(np.all(np.asarray(result.ok))):
            raise SymgradError("the data's solver failed on a transformed test state: "
                               + "; ".join(describe_failures(result)[:3]))
        out = result.states[:, -1]
        plain = out[:n]
        sig = jnp.asarray(np.asarray(sigma), jnp.float64)
        rows = [smse(out[(k + 1) * n:(k + 2) * n], group.target(g, plain), sig) for k, g in enumerate(group.elements)]
        return np.asarray(jnp.stack(rows), np.float64)


def defect_variable(defect) -> dict:
    """The result's ``data_defect`` variable ``(element, sample)`` with its CF attributes."""
    return {DEFECT: (("element", "sample"), np.asarray(defect, np.float64),
                     {"long_name": DEFECT_LONG_NAME, "units": "1",
                      "description": "scaled mean-squared error with the model's scales, docs/design.md section 4; "
                                     "the error of a model that reproduced the data's solver exactly: "
                                     "below it, fitting the data and being symmetric conflict"})}
