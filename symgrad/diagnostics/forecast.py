"""What an overlap computation will cost, said before it starts and refined as chunks finish.

Two numbers: Gauss-Newton products, and the seconds one product takes on these devices.

* Seconds per product are timed here (``time_products``): a product of the plan's product
  chunk, compiled first, then timed twice; the fastest counts.
* Products before any solve come from the spectrum probe (``spectrum.predicted_products``:
  ``KRYLOV_PER_DEFF`` times its interval of d_eff), spread over the chunks by the block
  Krylov law of the records, Krylov dimension proportional to ``s ** CHUNK_EXPONENT`` for s
  right-hand sides sharing one space (docs/overlap.md section 4). The probe cannot resolve
  eigenvalues far below its Ritz values: an interval wider than ``UNINFORMATIVE`` is said
  to be uninformative.
* From a pilot, early in the first chunk (``Pilot``): its own stopping bound, extrapolated
  to the target once it has fallen ``PILOT_DROP`` times, predicts the first chunk's products
  and so, by the same law, the whole computation's (``Forecast.from_pilot``). This is the
  forecast to wait by: it is made after a few percent of the work, on the solve itself.
* After a chunk: every chunk still to come is forecast from the products the finished
  chunks actually took, by the same law (``Forecast.after``): "chunk 0: K products; about
  7K to go".
* Where chunk 0's Lanczos vectors deflate the later chunks (``solvers._deflation``), chunk 0
  runs undeflated with its basis kept and costs more than they do: its pilot forecasts them
  from the rate its own bound has reached (``Pilot.deflated_chunk``), the first deflated
  chunk has a pilot of its own, and ``after`` reads the later chunks from the deflated ones.

Every figure is stored with the result (``forecast_*`` attributes) next to the products
spent, so that each forecast can be checked against what happened.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

# Products of a block solve of s right-hand sides sharing one Krylov space grow like s**0.45
# (fit of the records, docs/overlap.md section 4).
CHUNK_EXPONENT = 0.45
# A probe interval whose ends differ by more than this factor is reported as uninformative.
UNINFORMATIVE = 4.0
# The pilot: the first chunk's own bound, once it has fallen PILOT_DROP times below its first
# finite value, is extrapolated (log-linear in products, over the latest PILOT_WINDOW of its
# history) to the stopping margin. On the proxy's records the first finite values fall 100x
# in a few steps and the fall is straight in log scale after that: a drop of 100 fitted over
# half the history predicted chunk 0 at 0.71 of its products, a drop of 1,000 over the
# latest third within 10% (benchmarks/records/overlap.json).
PILOT_DROP = 1000.0
PILOT_WINDOW = 1 / 3


def time_products(operator, vectors: int, repeats: int = 2) -> float:
    """Seconds per vector of one product of ``vectors`` random vectors (after a compiling call)."""
    import jax

    from symgrad.diagnostics.solvers._base import device_block, host_width

    rows = np.random.default_rng(0).normal(size=(int(vectors), host_width(operator)))
    block = device_block(operator, rows)
    count = operator.products
    jax.block_until_ready(operator(block))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(operator(block))
        best = min(best, time.perf_counter() - t0)
    operator.products = count  # timing is not part of any solve's count
    return best / int(vectors)


def _shares(columns) -> np.ndarray:
    weights = np.asarray(columns, np.float64) ** CHUNK_EXPONENT
    return weights / weights.sum()


@dataclasses.dataclass(frozen=True)
class Forecast:
    """Products per chunk (done ones as spent), and the seconds one product takes."""

    columns: tuple[int, ...]  # right-hand sides of each chunk
    products: tuple[float, ...]  # expected (or spent) products of each chunk
    low: float  # the whole computation's products: range
    high: float
    seconds_per_product: float | None
    done: int = 0  # chunks finished
    source: str = "probe"
    apart: int = 0  # leading chunks that do not predict the rest (chunk 0 when it is recycled)

    @classmethod
    def from_probe(cls, columns, interval, seconds_per_product=None) -> "Forecast":
        """The forecast before any solve: the probe's interval of one solve of every column,
        shared over the chunks (module docstring)."""
        lo, hi = (float(a) for a in interval)
        total = np.asarray(columns, np.float64)
        one = total.sum() ** CHUNK_EXPONENT
        scale = float(np.sum(total ** CHUNK_EXPONENT) / one)  # chunked costs more than one space
        mid = float(np.sqrt(max(lo, 1.0) * max(hi, 1.0))) * scale
        return cls(tuple(int(c) for c in columns), tuple(mid * _shares(columns)), lo * scale, hi * scale,
                   seconds_per_product)

    @classmethod
    def from_pilot(cls, columns, predicted: float, seconds_per_product=None, *, chunk: int = 0,
                   spent: dict | None = None, later: float | None = None) -> "Forecast":
        """The forecast from a pilot's prediction of chunk ``chunk``'s products: the chunks
        before it as ``spent``, those after it by the Krylov law (the chunks' products only),
        from ``later`` (the products of one later chunk of the same columns, when those differ in
        kind: ``Pilot.deflated_chunk``) or else from the prediction."""
        cols = np.asarray(columns, np.float64)
        per = float(predicted) / cols[chunk] ** CHUNK_EXPONENT
        per_later = per if later is None else float(later) / cols[chunk] ** CHUNK_EXPONENT
        products = tuple(float((spent or {}).get(c, 0)) if c < chunk else
                         float((per if c == chunk else per_later) * cols[c] ** CHUNK_EXPONENT)
                         for c in range(len(cols)))
        total = float(sum(products))
        return cls(tuple(int(c) for c in columns), products, total, total, seconds_per_product, done=chunk,
                   source=f"pilot of chunk {chunk}" if chunk else "pilot")

    def with_first_apart(self) -> "Forecast":
        """Chunk 0 no longer predicts the others (it is undeflated and keeps its basis for the
        deflation space of the rest): ``after`` reads the later chunks from later chunks."""
        return dataclasses.replace(self, apart=1)

    @classmethod
    def unknown(cls, columns, seconds_per_product=None) -> "Forecast":
        """No forecast before the first chunk (no probe); ``after`` makes one from it."""
        return cls(tuple(int(c) for c in columns), (0.0,) * len(columns), 0.0, 0.0, seconds_per_product,
                   source="nothing")

    def after(self, chunk: int, spent: dict, later: float | None = None) -> "Forecast":
        """Refined once chunks ``spent`` (index -> products) are done: what is left, from them;
        with chunk 0 apart and none after it done yet, from ``later`` (the products of one later
        chunk of chunk 0's columns, ``Pilot.deflated_chunk``) when given."""
        cols = np.asarray(self.columns, np.float64)
        done = sorted(spent)
        if any(c >= self.apart for c in done):
            done = [c for c in done if c >= self.apart]
        per = np.mean([spent[c] / cols[c] ** CHUNK_EXPONENT for c in done if cols[c] > 0])
        if self.apart and later is not None and all(c < self.apart for c in done):
            per = float(later) / cols[0] ** CHUNK_EXPONENT
        products = [float(spent[c]) if c in spent else float(per * cols[c] ** CHUNK_EXPONENT)
                    for c in range(len(cols))]
        total = float(sum(products))
        return dataclasses.replace(self, products=tuple(products), low=total, high=total, done=chunk + 1,
                                   source=f"chunks 0-{chunk}" if chunk else "chunk 0")

    @property
    def total(self) -> float:
        return float(sum(self.products))

    @property
    def remaining(self) -> float:
        return float(sum(self.products[self.done:]))

    @property
    def informative(self) -> bool:
        return self.source != "probe" or self.high <= UNINFORMATIVE * max(self.low, 1.0)

    def describe(self) -> str:
        eta = "" if self.seconds_per_product is None else f" ({_duration(self.remaining * self.seconds_per_product)})"
        if self.source == "nothing":
            return "no forecast before the first chunk (no spectrum probe): it will say"
        if self.source == "probe":
            note = "" if self.informative else (" -- the probe's interval is uninformative here: the first chunk "
                                                "will say more")
            per = ("" if self.seconds_per_product is None
                   else f"; {self.seconds_per_product * 1e3:.3g} ms per product here")
            return (f"forecast from the spectrum probe: about {self.total:,.0f} Gauss-Newton products "
                    f"({self.low:,.0f} to {self.high:,.0f}){eta}{per}{note}")
        return f"forecast from {self.source}: about {self.remaining:,.0f} products to go{eta}, {self.total:,.0f} in all"

    def to_attrs(self, prefix: str) -> dict:
        return {f"{prefix}_products": round(self.total, 1), f"{prefix}_low": round(self.low, 1),
                f"{prefix}_high": round(self.high, 1), f"{prefix}_source": self.source}


class Pilot:
    """Watches the first chunk's stopping bound (``observe(steps, products, worst)``, ``worst``
    in units of the target) and, once it has fallen ``PILOT_DROP`` times, predicts the
    products at which it reaches the target (``prediction``; None before)."""

    def __init__(self):
        self.history: list[tuple[int, float]] = []
        self.prediction: float | None = None
        self.rate: float | None = None  # the fall of ln(bound) per product at the prediction
        self.at: int | None = None  # products spent when the prediction was made

    def observe(self, steps: int, products: int, worst: float) -> bool:
        """True once, when the prediction is made."""
        if not np.isfinite(worst) or worst <= 0:
            return False
        self.history.append((int(products), float(np.log(worst))))  # kept to the end: ``deflated_chunk``
        if self.prediction is not None:
            return False
        first, now = self.history[0][1], self.history[-1][1]
        if first - now < np.log(PILOT_DROP) or len(self.history) < 4:
            return False
        recent = np.asarray(self.history[-max(4, int(len(self.history) * PILOT_WINDOW)):], np.float64)
        slope = np.polyfit(recent[:, 0], recent[:, 1], 1)[0]
        if not slope < 0:
            return False
        self.prediction = float(products + max(now, 0.0) / -slope)
        self.rate = float(-slope)
        self.at = int(products)
        return True

    def deflated_chunk(self) -> float | None:
        """Products of a chunk of the same columns whose process starts with the top of the
        spectrum deflated (``solvers._deflation``, recycled from this chunk): its bound falls from
        this chunk's first finite value to the target at the rate this chunk has reached. That
        rate is the one of the superlinear phase, once the Ritz values have found the top of the
        spectrum and taken it out of the effective condition number, which deflation does from
        the start. The rate is the latest one: at the prediction, or, asked again once the chunk
        has gone on, the one it has reached since (docs/overlap.md section 8). None before a
        prediction."""
        if self.prediction is None:
            return None
        rate = self.rate
        recent = np.asarray(self.history[-max(4, int(len(self.history) * PILOT_WINDOW)):], np.float64)
        if len(recent) >= 4 and recent[-1, 0] > self.at:  # the rate reached since, once the chunk went on
            slope = np.polyfit(recent[:, 0], recent[:, 1], 1)[0]
            rate = float(-slope) if slope < 0 else rate
        return float(max(self.history[0][1], 0.0) / rate)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"about {seconds:.0f} s"
    if seconds < 7200:
        return f"about {seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"about {seconds / 3600:.1f} h"
    return f"about {seconds / 86400:.1f} days"
