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


def test_a_later_chunks_pilot_keeps_the_chunks_spent_before_it():
    # chunk 0 spent 752 (undeflated, its vectors recycled); chunk 1's pilot predicts 312
    f = Forecast.from_pilot([8, 8, 8, 4], 312.0, chunk=1, spent={0: 752})
    np.testing.assert_allclose(f.products, [752.0, 312.0, 312.0, 312.0 * 0.5**CHUNK_EXPONENT])
    assert f.done == 1 and f.source == "pilot of chunk 1"
    np.testing.assert_allclose(f.remaining, f.total - 752.0)


def test_a_recycled_chunk_0_does_not_predict_the_deflated_chunks():
    probe = Forecast.from_probe([8, 8, 8, 8], (2000.0, 4000.0))
    # by default every finished chunk predicts the rest
    assert probe.after(1, {0: 752, 1: 312}).total == 752 + 312 + 2 * (752 + 312) / 2
    apart = probe.with_first_apart()
    # before any deflated chunk is done, chunk 0 is all there is
    assert apart.after(0, {0: 752}).total == 4 * 752
    # after one, chunk 0 no longer counts for the rest
    assert apart.after(1, {0: 752, 1: 312}).total == 752 + 3 * 312
    assert apart.after(2, {0: 752, 1: 312, 2: 300}).total == 752 + 312 + 300 + 306


def test_a_deflated_chunk_is_forecast_at_the_rate_chunk_0_reached():
    # chunk 0's bound falls superlinearly: ln(bound) from ln(1e6) at rate 0.01 per product for
    # 200 products, then at 0.05 (the top of the spectrum found). A chunk with that top deflated
    # from the start falls at 0.05 all the way: ln(1e6) / 0.05 products.
    pilot = Pilot()
    assert pilot.deflated_chunk() is None
    log_bound = lambda p: np.log(1e6) - (0.01 * p if p < 200 else 2 + 0.05 * (p - 200))  # noqa: E731
    for step in range(1, 200):
        products = 8 * step
        pilot.observe(step, products, float(np.exp(log_bound(products))))
        if log_bound(products) < 0:
            break
    assert pilot.prediction is not None and pilot.at < products  # made on the way, kept watching after
    np.testing.assert_allclose(pilot.deflated_chunk(), np.log(1e6) / 0.05, rtol=0.05)
    # watched only to its prediction, a pilot still in the slow phase forecasts at that rate
    slow = Pilot()
    for step in range(1, 200):
        if slow.observe(step, 8 * step, float(np.exp(np.log(1e6) - 0.01 * 8 * step))):
            break
    np.testing.assert_allclose(slow.deflated_chunk(), np.log(1e6) / 0.01, rtol=0.01)
