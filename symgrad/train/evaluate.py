"""What the loop measures at each epoch end: evaluators, each an object with one method.

``evaluate(params)`` returns the value recorded under the evaluator's key of the epoch
record (``metrics.json``, ``metrics.nc``, TensorBoard). :func:`symgrad.train.setup.setup`
builds them; a new one is a class here, an entry of ``Setup.evaluators`` and, for the
archival record, a variable in :mod:`symgrad.train.metrics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from symgrad.train import distributed


def _padded(indices: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    pad = size - len(indices)
    idx = np.concatenate([indices, np.repeat(indices[-1:], pad)]) if pad else indices
    mask = np.arange(size) < len(indices)
    return idx, mask


@dataclasses.dataclass(frozen=True)
class ValidationSMSE:
    """One-step SMSE over the first ``n_val`` validation transitions (NaN without any),
    in padded global batches of ``eval_batch`` (a multiple of the device count)."""

    source: Any  # TransitionSource of the validation trajectories, or None
    n_val: int
    eval_batch: int
    sharding: Any  # the batch sharding of the mesh
    eval_one: Callable  # symgrad.train.step.make_eval_fns

    def evaluate(self, params) -> float:
        if not self.n_val:
            return float("nan")
        total = count = 0.0
        sl = distributed.local_slice(self.eval_batch)
        for start in range(0, self.n_val, self.eval_batch):
            idx, mask = _padded(np.arange(start, min(self.n_val, start + self.eval_batch)), self.eval_batch)
            x, y = self.source.get(idx[sl])
            xg, yg, mg = distributed.global_batch(self.sharding, (x, y, mask[sl]), self.eval_batch)
            s, c = self.eval_one(params, xg, yg, mg)
            total += float(distributed.fetch(s))
            count += float(distributed.fetch(c))
        return total / count


@dataclasses.dataclass(frozen=True)
class RolloutSMSE:
    """Autoregressive SMSE per lead time of the validation trajectories ``ids``, rolled
    out from their first selected time over the others (``[]`` without any)."""

    dataset: Any
    ids: np.ndarray
    times: np.ndarray
    eval_batch: int
    sharding: Any
    eval_rollout: Callable  # symgrad.train.step.make_eval_fns

    def evaluate(self, params) -> list[float]:
        if not (len(self.ids) and len(self.times) > 1):
            return []
        sums = np.zeros(len(self.times) - 1)
        count = 0.0
        sl = distributed.local_slice(self.eval_batch)
        for start in range(0, len(self.ids), self.eval_batch):
            ids, mask = _padded(self.ids[start:start + self.eval_batch], self.eval_batch)
            traj = self.dataset.states(ids[sl], self.times)
            tg, mg = distributed.global_batch(self.sharding, (traj, mask[sl]), self.eval_batch)
            s, c = self.eval_rollout(params, tg, mg)
            sums += distributed.fetch(s)
            count += float(distributed.fetch(c))
        return (sums / count).tolist()


@dataclasses.dataclass(frozen=True)
class PersistenceBaseline:
    """The errors of predicting "nothing changes" (``f(x) = x``) on the transitions and
    rollouts that :class:`ValidationSMSE` and :class:`RolloutSMSE` evaluate: ``SMSE(x, y)``
    and ``SMSE(x_0, x_t)`` per lead time, in float64 on the host. A model whose validation
    SMSE is not below it has learnt less than the identity map. It does not depend on the
    parameters: the loop evaluates it once."""

    source: Any
    n_val: int
    dataset: Any
    ids: np.ndarray
    times: np.ndarray
    sigma: np.ndarray

    def evaluate(self, params=None) -> tuple[float, list[float]]:
        sigma = np.asarray(self.sigma, dtype=np.float64)

        def smse(a, b):
            return np.mean(((np.asarray(a, np.float64) - np.asarray(b, np.float64)) / sigma) ** 2,
                           axis=(-3, -2, -1))

        val = float("nan")
        if self.source is not None and self.n_val:
            total = 0.0
            for start in range(0, self.n_val, 256):
                x, y = self.source.get(np.arange(start, min(self.n_val, start + 256)))
                total += float(np.sum(smse(x, y)))
            val = total / self.n_val
        rollout: list[float] = []
        if len(self.ids) and len(self.times) > 1:
            traj = np.asarray(self.dataset.states(np.asarray(self.ids), self.times))  # (B, T, nx, ny, 4)
            rollout = np.mean(smse(traj[:, :1], traj[:, 1:]), axis=0).tolist()
        return val, rollout


@dataclasses.dataclass(frozen=True)
class CoefficientSpread:
    """``weight`` times the relaxed model's coefficient spread over the group
    (:func:`symgrad.models.coefficient_spread`, jitted as ``spread``) at the epoch end:
    weight 1 is the measured spread, the config's ``relaxation_weight`` the penalty."""

    spread: Callable
    weight: float

    def evaluate(self, params) -> float:
        return self.weight * float(distributed.fetch(self.spread(params)))
