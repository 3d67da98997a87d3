"""The solver's own Galilean defect at 32, 64 and 128 cells, and its observed order.

``symgrad.euler.boost_defect``: ``||S(B_c q0) - T_{c dt} B_c S(q0)||_1 / ||S(q0) - q0||_1``
over one solve ``S`` of ``dt = 1/8`` (boosts of ``c = 0.5`` and ``1``: ``n c / 8`` cells per
step, exact on every grid here), on

- two Sod problems on the periodic line (``n x 1`` cells; ``tests/test_boosts.py`` checks the
  same against the scheme's own error, from ``symgrad/euler/exact_riemann.py``), and
- CE-RP initial states in 2-D (straight interfaces, ``symmetrize=False`` so that every
  resolution samples the same pattern; 2 states).

Writes ``benchmarks/records/boost_defect.json``. ``python benchmarks/boost_defect.py``
(about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

RESOLUTIONS = (32, 64, 128)
DT = 0.125
SPEEDS = (0.5, 1.0)


def sod(n):
    from symgrad.euler import primitive_to_conservative

    x = (np.arange(n) + 0.5) / n
    inside = (x >= 0.25) & (x < 0.75)
    rho, p = np.where(inside, 1.0, 0.125), np.where(inside, 1.0, 0.1)
    return np.asarray(primitive_to_conservative(rho, 0 * x, 0 * x, p, 1.4))[None, :, None, :]


def ce_rp(n):
    from symgrad.euler import sample_initial
    from symgrad.euler.initial import RPConfig

    return np.asarray(sample_initial("CE-RP", jax.random.key(0), 2, n, RPConfig(symmetrize=False)))


def main() -> int:
    from symgrad.euler import boost_defect, observed_order
    from symgrad.io import provenance

    results = {}
    for name, initial in (("sod-1d", sod), ("ce-rp-2d", ce_rp)):
        for c in SPEEDS:
            defects = [float(np.mean(boost_defect(initial(n), round(c * n * DT), DT))) for n in RESOLUTIONS]
            orders = [float(o) for o in observed_order(RESOLUTIONS, defects)]
            results[f"{name} c={c:g}"] = {"resolutions": list(RESOLUTIONS), "defect": defects, "observed_order": orders}
            print(f"{name:9} c = {c:g}: defect {', '.join(f'{d:.4f}' for d in defects)} at {RESOLUTIONS} cells; "
                  f"observed orders {', '.join(f'{o:.2f}' for o in orders)}")
    record = {"benchmark": "boost_defect", **provenance(), "results": results,
              "note": f"relative L1 defect ||S(B_c q0) - T B_c S(q0)||_1 / ||S(q0) - q0||_1, one solve of dt = {DT}, "
                      "default EulerConfig (MUSCL-HLLC, mc limiter, SSP-RK2, cfl 0.4), float64"}
    path = Path(__file__).parent / "records" / "boost_defect.json"
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
