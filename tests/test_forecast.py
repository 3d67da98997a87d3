"""The cost forecast: the pilot's extrapolation and the chunk law (no model needed)."""

import numpy as np

from symgrad.diagnostics.forecast import CHUNK_EXPONENT, PILOT_DROP, Forecast, Pilot


def test_pilot_extrapolates_a_log_linear_fall_to_the_target():
    # a bound that is infinite for the first steps, then falls as 1e6 exp(-products / 500):
    # it reaches the target (1) at 500 ln(1e6) products, which the pilot must predict
    pilot = Pilot()
    made = []
    for step in range(1, 2000):
        products = 8 * step
        worst = np.inf if products < 400 else 1e6 * np.exp(-products / 500)
        if pilot.observe(step, products, worst):
            made.append(products)
        if worst < 1:
            break
    assert made == [pilot.at], "the prediction is made once"
    first_finite = 1e6 * np.exp(-400 / 500)
    assert 1e6 * np.exp(-pilot.at / 500) <= first_finite / PILOT_DROP  # not before the bound fell that far
    np.testing.assert_allclose(pilot.prediction, 500 * np.log(1e6), rtol=0.01)


def test_pilot_says_nothing_from_a_bound_that_does_not_fall():
    pilot = Pilot()
    for step in range(1, 500):
        assert not pilot.observe(step, 8 * step, 1e3 * (1 + 0.1 * np.sin(step)))
    assert pilot.prediction is None


def test_forecast_from_the_pilot_spreads_over_the_chunks_by_the_krylov_law():
    f = Forecast.from_pilot([8, 8, 4], 1000.0, seconds_per_product=0.01)
    np.testing.assert_allclose(f.products, [1000.0, 1000.0, 1000.0 * 0.5**CHUNK_EXPONENT])
    assert f.total == f.low == f.high and f.source == "pilot"
    assert "forecast from pilot" in f.describe() and "products" in f.describe()
