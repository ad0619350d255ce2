"""Uncertainty -> smoothing mapping: properties of each strategy, and termination."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ual.mapping import MEAN_TOLERANCE, SmoothingMappingError, fit_smoothing, summarize

# Judge scores are parsed numbers on a 0-99 rubric: three decimals is more precision than any judge gives
# (and keeps denormal floats, which no scorer produces, out of the search).
scores = st.lists(st.floats(min_value=0, max_value=99).map(lambda x: round(x, 3)), min_size=1, max_size=200)


def authors_loop(u, target, eps_max, tol=1e-10, max_iter=100_000):
    """The authors' make_score_dist clip/rescale loop, run to its limit (they stop at 1e-3): the fixed point the
    closed form must equal."""
    eps = target * u / u.mean()
    for _ in range(max_iter):
        eps = np.minimum(eps, eps_max)
        if abs(eps.mean() - target) < tol:
            return eps
        eps = eps * target / eps.mean()
    raise AssertionError("the reference loop did not converge")


@settings(max_examples=200, deadline=None)
@given(u=scores, target=st.floats(0.01, 0.6), eps_max=st.floats(0.2, 0.99))
def test_uncertainty_mean_clip_monotone(u, target, eps_max):
    u = np.array(u)
    reachable = eps_max * (u > 0).mean()
    assume((u > 0).any() and target < reachable - 1e-6)
    fitted = fit_smoothing(u, "uncertainty", target_mean=target, smoothing_max=eps_max)
    eps = fitted(u)
    assert abs(eps.mean() - target) < MEAN_TOLERANCE
    assert eps.max() <= eps_max + 1e-12 and eps.min() >= 0
    order = np.argsort(u, kind="stable")
    assert np.all(np.diff(eps[order]) >= -1e-12), "eps must not decrease as uncertainty grows"
    assert np.all(eps[u == 0] == 0), "a score of 0 means no smoothing"


@settings(max_examples=100, deadline=None)
@given(u=scores, target=st.floats(0.01, 0.5), eps_max=st.floats(0.3, 0.99))
def test_uncertainty_matches_authors_loop(u, target, eps_max):
    u = np.array(u)
    assume((u > 0).any() and target < eps_max * (u > 0).mean() * 0.98)
    ours = fit_smoothing(u, "uncertainty", target_mean=target, smoothing_max=eps_max)(u)
    np.testing.assert_allclose(ours, authors_loop(u, target, eps_max), atol=1e-6)


def test_proportional_without_clipping_is_the_paper_formula():
    u = np.array([10.0, 20.0, 30.0, 40.0])
    eps = fit_smoothing(u, "uncertainty", target_mean=0.1)(u)
    np.testing.assert_allclose(eps, 0.1 * u / u.mean())


def test_clipping_rescales_the_rest():
    u = np.array([1.0, 1.0, 1.0, 97.0])
    eps = fit_smoothing(u, "uncertainty", target_mean=0.3, smoothing_max=0.5)(u)
    assert eps[3] == pytest.approx(0.5)
    assert eps.mean() == pytest.approx(0.3)
    np.testing.assert_allclose(eps[:3], (1.2 - 0.5) / 3)


@pytest.mark.parametrize(
    "u, target, eps_max, message",
    [
        ([0, 0, 0], 0.1, 0.99, "every uncertainty score is 0"),
        ([10, 20], 0.995, 0.99, "unreachable"),
        ([0, 0, 0, 50], 0.3, 0.99, "unreachable"),  # only 1 of 4 can be smoothed: max mean 0.2475
        ([10, 20], 1.5, 0.99, "must lie in"),
    ],
)
def test_unreachable_target_raises_instead_of_looping(u, target, eps_max, message):
    with pytest.raises(SmoothingMappingError, match=message):
        fit_smoothing(np.array(u, dtype=float), "uncertainty", target_mean=target, smoothing_max=eps_max)


def test_target_exactly_at_the_reachable_maximum():
    u = np.array([0.0, 10.0, 30.0])
    eps = fit_smoothing(u, "uncertainty", target_mean=0.66, smoothing_max=0.99)(u)
    np.testing.assert_allclose(eps, [0, 0.99, 0.99])


@settings(max_examples=50, deadline=None)
@given(u=scores)
def test_linear_maps_range_onto_bounds(u):
    u = np.array(u)
    fitted = fit_smoothing(u, "linear", smoothing_min=0.05, smoothing_max=0.4, uncertainty_range=(0, 99))
    eps = fitted(u)
    assert eps.min() >= 0.05 - 1e-12 and eps.max() <= 0.4 + 1e-12
    np.testing.assert_allclose(fitted(np.array([0.0, 49.5, 99.0])), [0.05, 0.225, 0.4])
    order = np.argsort(u, kind="stable")
    assert np.all(np.diff(eps[order]) >= -1e-12)


def test_constant_and_none():
    u = np.array([3.0, 60.0, 99.0])
    np.testing.assert_allclose(fit_smoothing(u, "constant", target_mean=0.1)(u), 0.1)
    np.testing.assert_allclose(fit_smoothing(None, "none")(np.zeros(3)), 0.0)


def test_unknown_strategy_names_the_choices():
    with pytest.raises(SmoothingMappingError, match="unknown smoothing strategy 'uncertianty'.*uncertainty"):
        fit_smoothing([1.0], "uncertianty")


def test_fitted_mapping_applies_to_new_data_unchanged():
    train = np.array([10.0, 20.0, 30.0])
    fitted = fit_smoothing(train, "uncertainty", target_mean=0.2)
    assert fitted(np.array([20.0]))[0] == pytest.approx(0.2)


def test_summary_line():
    line = summarize(np.array([0.0, 0.1, 0.2]))
    assert "min=0.0000" in line and "mean=0.1000" in line and "max=0.2000" in line and "hist" in line
