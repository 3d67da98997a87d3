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


def test_the_deflation_space_is_cut_to_what_the_forecast_affords():
    from symgrad.diagnostics.plan import (DEFLATION_COST_SHARE, RITZ_BLOCK, affordable_deflation,
                                          deflation_products)

    # the Ritz run (RITZ_BLOCK vectors, ritz_steps(k) + 1 blocks) and AZ (k)
    assert deflation_products(256) == 16 * 49 + 256 and deflation_products(0) == 0
    for forecast in (100.0, 900.0, 2_000.0, 3_036.0, 1e5):
        k = affordable_deflation(256, forecast)
        assert k == 0 or deflation_products(k) <= DEFLATION_COST_SHARE * forecast
        if k < 256:  # the largest that pays: twice as many would not
            assert deflation_products(2 * max(k, RITZ_BLOCK // 2)) > DEFLATION_COST_SHARE * forecast
    # the measured cases: the small UNet at 1e-2 (forecast 897, spent 1,048) gets 64 vectors,
    # the tiny proxy (forecasts 3,036 and 3,121) keeps its 256
    assert [affordable_deflation(256, f) for f in (896.5, 3036.4, 3120.5)] == [64, 256, 256]
    assert affordable_deflation(256, 40.0) == 0 and affordable_deflation(32, 1e6) == 32
