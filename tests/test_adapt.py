"""AdaptiveBatchSize: the batch size grows with the measured noise scale; the learning rate follows AdaScale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastbatch as fb
from fastbatch.adapt import adascale_gain


def _regression(n: int = 40_000, noise: float = 3.0, seed: int = 0) -> fb.SlidingWindows:
    """Rows (x1, x2, x3, y) with y = w.x + noise: windows of one row, the loop splits inputs and target."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5], np.float32) + noise * rng.standard_normal(n).astype(np.float32)
    return fb.SlidingWindows(np.column_stack([x, y]), window=1, horizon=0)


def _train(windows, *, epochs: int, **adapt_kwargs):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = fb.WindowLoader(windows, batch_size=16, shuffle=True, seed=1)
    gns = fb.GradientNoiseScale(model, beta=0.9, every=1)
    adapt = fb.AdaptiveBatchSize(loader, gns, optimizer, **adapt_kwargs)
    seen, gains = [], []
    for _ in range(epochs):
        epoch_rows = []
        for x, _ in loader:
            rows = x[:, 0]
            loss = torch.nn.functional.mse_loss(model(rows[:, :3]).squeeze(1), rows[:, 3])
            loss.backward()
            gns.step(len(x))
            optimizer.step()
            optimizer.zero_grad()
            adapt.step()
            gains.append((adapt.gain, loader.batch_size, optimizer.param_groups[0]["lr"]))
            epoch_rows.append(rows[:, 3].numpy().copy())
        seen.append(np.sort(np.concatenate(epoch_rows)))
    return loader, adapt, gns, seen, gains


def test_the_batch_size_grows_towards_the_noise_scale_and_every_window_still_comes_once():
    windows = _regression()
    loader, adapt, gns, seen, gains = _train(windows, epochs=2, max_batch_size=1024, every=20)
    assert adapt.history, "noisy targets and a model near its optimum: B_noise grows past 2 x 16"
    sizes = [b for _, b in adapt.history]
    assert sizes == sorted(sizes) and sizes[-1] <= 1024 and loader.batch_size == sizes[-1]
    assert gns.b_simple >= 2 * 16
    targets = np.sort(windows.data[:, 3])
    for epoch_rows in seen:
        np.testing.assert_array_equal(epoch_rows, targets)  # each window exactly once per epoch
    for gain, batch_size, lr in gains:
        assert 1.0 <= gain <= batch_size / 16 + 1e-9
        assert lr == pytest.approx(0.01 * gain)


def test_without_noise_the_batch_size_stays():
    loader, adapt, _, _, gains = _train(_regression(n=8_000, noise=0.0), epochs=1, max_batch_size=1024, every=10,
                                       growth=1e9)
    assert adapt.history == [] and loader.batch_size == 16


def test_the_gain_is_adascale():
    assert adascale_gain(100.0, 1.0, 10, 10) == 1.0
    assert adascale_gain(0.0, 1.0, 10, 1000) == 1.0  # no noise: a bigger batch makes no faster progress
    assert adascale_gain(1e9, 1e-9, 10, 1000) == pytest.approx(100.0)  # all noise: linear scaling
    assert adascale_gain(100.0, 1.0, 10, 100) == pytest.approx((10 + 1) / (1 + 1))


def test_state_round_trip_and_bad_arguments():
    windows = _regression(n=2_000)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = fb.WindowLoader(windows, batch_size=32)
    gns = fb.GradientNoiseScale(model, every=1)
    adapt = fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=256)
    adapt.steps, adapt.history = 120, [(100, 64)]
    other = fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=256)
    other.load_state_dict(adapt.state_dict())
    assert other.state_dict() == adapt.state_dict()
    with pytest.raises(ValueError, match="max_batch_size must be an integer >= 32"):
        fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=16)
    with pytest.raises(ValueError, match="growth must be a number >= 1"):
        fb.AdaptiveBatchSize(loader, gns, optimizer, max_batch_size=256, growth=0.5)
    with pytest.raises(TypeError, match="loader must be a fastbatch.WindowLoader"):
        fb.AdaptiveBatchSize(object(), gns, optimizer, max_batch_size=256)
    with pytest.raises(TypeError, match="optimizer must be a torch optimizer"):
        fb.AdaptiveBatchSize(loader, gns, object(), max_batch_size=256)
    with pytest.raises(ValueError, match="not an AdaptiveBatchSize state"):
        other.load_state_dict({"steps": 1})


def test_an_estimate_without_a_positive_gradient_norm_changes_nothing():
    """b_simple infinite (|G|^2 averaged to <= 0 by the estimator's noise): no jump to the maximum."""

    class Noise(fb.GradientNoiseScale):
        b_simple, grad_sq, trace_cov = float("inf"), -1.0, 5.0

        def __init__(self):  # noqa: D107 - a stand-in with fixed figures
            pass

    loader = fb.WindowLoader(_regression(n=2_000), batch_size=16)
    optimizer = torch.optim.SGD(torch.nn.Linear(3, 1).parameters(), lr=0.1)
    adapt = fb.AdaptiveBatchSize(loader, Noise(), optimizer, max_batch_size=512, every=1)
    for _ in range(5):
        adapt.step()
    assert loader.batch_size == 16 and adapt.history == [] and optimizer.param_groups[0]["lr"] == 0.1
