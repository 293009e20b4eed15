"""The gradient noise scale: measure_noise_scale against a closed form, its guarantees, and the online form.

The closed form. Linear regression without a bias, ``y = w·x + ε`` with
``x ~ N(0, I_d)`` and ``ε ~ N(0, σ²)``, evaluated at parameters ``w + δ``
with the loss ``½(ŷ − y)²``. The residual is ``r = ŷ − y = δ·x − ε``, so the
per-sample gradient is ``g = r·x = (δ·x − ε)·x`` and

- ``G = E g = E[x xᵀ]δ − E[ε]E[x] = δ``, hence ``|G|² = |δ|²``;
- ``E|g|² = E[(δ·x)²|x|²] + σ²E|x|²`` (the cross term has ``E ε = 0``).
  By the Gaussian moments ``E x_i⁴ = 3``, ``E x_i² x_k² = 1`` (``i ≠ k``)
  and every odd moment 0, ``E[(δ·x)²|x|²] = Σ_i δ_i² E[x_i²|x|²]
  = Σ_i δ_i² (3 + d − 1) = (d + 2)|δ|²``; and ``E|x|² = d``;
- ``tr(Σ) = E|g|² − |G|² = (d + 1)|δ|² + σ²d``;
- ``B_simple = tr(Σ)/|G|² = d + 1 + σ²d/|δ|²``, the formula of issue 10.

With the loss ``(ŷ − y)²`` every gradient doubles: ``|G|²`` and ``tr(Σ)``
are 4× larger and ``B_simple`` is the same (tested too). A bias term would
add the coordinate ``g_0 = r`` (``E r² = |δ|² + σ²``) and change the
formula, so the model here has none.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

import fastbatch as fb


def half_squared(prediction, target):
    return 0.5 * (prediction.squeeze(-1) - target).square().mean()


def squared(prediction, target):
    return (prediction.squeeze(-1) - target).square().mean()


def regression(d, sigma, delta_norm, *, seed=0, n_batches=200, batch_size=512):
    """``(model at w + δ, batches, closed-form B_simple, |δ|², tr(Σ))`` for the problem in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    delta = torch.randn(d, generator=g)
    delta *= delta_norm / delta.norm()
    x = torch.randn(n_batches, batch_size, d, generator=g)
    y = x @ w + sigma * torch.randn(n_batches, batch_size, generator=g)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_((w + delta)[None])
    trace = (d + 1) * delta_norm**2 + sigma**2 * d
    return model, list(zip(x, y)), trace / delta_norm**2, delta_norm**2, trace


# Over 20 seeds per case, the relative error of b_simple had a standard
# deviation of 1.2-3.7 %, so 15 % is four standard deviations or more.
@pytest.mark.parametrize("d,sigma,delta_norm", [(4, 1.0, 0.5), (16, 0.5, 1.0), (8, 2.0, 1.0), (32, 1.0, 0.5),
                                                (64, 1.0, 1.0)])
def test_b_simple_matches_the_closed_form_of_linear_regression(d, sigma, delta_norm):
    model, batches, b_simple, grad_sq, trace = regression(d, sigma, delta_norm)
    ns = fb.measure_noise_scale(model, half_squared, batches)
    assert ns.b_simple == pytest.approx(b_simple, rel=0.15)
    assert ns.grad_sq == pytest.approx(grad_sq, rel=0.15)
    assert ns.trace_cov == pytest.approx(trace, rel=0.15)
    assert (ns.samples, ns.batches, ns.skipped, ns.micro_batches) == (200 * 512, 200, 0, 4)


def test_the_squared_loss_without_the_half_scales_both_terms_and_not_their_ratio():
    model, batches, *_ = regression(8, 1.0, 1.0, n_batches=20)
    half = fb.measure_noise_scale(model, half_squared, batches)
    full = fb.measure_noise_scale(model, squared, batches)
    assert full.b_simple == pytest.approx(half.b_simple, rel=1e-5)
    assert full.grad_sq == pytest.approx(4 * half.grad_sq, rel=1e-5)
    assert full.trace_cov == pytest.approx(4 * half.trace_cov, rel=1e-5)


def test_one_batch_is_the_two_size_formula_of_its_parts():
    """Against a hand computation: parts' mean gradients by autograd, then McCandlish's two equations."""
    model, batches, *_ = regression(3, 1.0, 1.0, n_batches=1, batch_size=12)
    x, y = batches[0]
    parts = []
    for i in range(3):
        model.zero_grad()
        half_squared(model(x[4 * i:4 * i + 4]), y[4 * i:4 * i + 4]).backward()
        parts.append(model.weight.grad.double().flatten().clone())
    model.weight.grad = None
    small = np.mean([float(p @ p) for p in parts])
    mean = torch.stack(parts).mean(0)
    big = float(mean @ mean)
    grad_sq = (12 * big - 4 * small) / (12 - 4)
    trace = (small - big) / (1 / 4 - 1 / 12)
    ns = fb.measure_noise_scale(model, half_squared, batches, micro_batches=3)
    assert ns.grad_sq == pytest.approx(grad_sq, rel=1e-6)
    assert ns.trace_cov == pytest.approx(trace, rel=1e-6)
    assert ns.interval == (ns.b_simple, ns.b_simple)  # one batch: every resample is that batch


def test_a_remainder_past_equal_parts_is_not_used():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=5, batch_size=11)
    trimmed = [(x[:8], y[:8]) for x, y in batches]
    ns = fb.measure_noise_scale(model, half_squared, batches)
    assert ns == fb.measure_noise_scale(model, half_squared, trimmed)
    assert ns.samples == 5 * 8


def test_one_micro_batch_is_refused_because_one_size_cannot_separate_noise_from_signal():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=2)
    with pytest.raises(ValueError, match=r"micro_batches=1: the estimator compares the gradient at two batch sizes"):
        fb.measure_noise_scale(model, half_squared, batches, micro_batches=1)


def test_a_zero_gradient_is_named_not_divided_by():
    model, batches, *_ = regression(4, 0.0, 1.0, n_batches=3)
    with torch.no_grad():
        model.weight.zero_()
    zero = [(x, torch.zeros_like(y)) for x, y in batches]  # a perfect fit: every gradient is exactly zero
    with pytest.raises(ValueError, match="the gradient is zero"):
        fb.measure_noise_scale(model, half_squared, zero)


def test_a_gradient_estimated_non_positive_is_named():
    # Two parts with opposite gradients: their mean is zero, so |G|² is estimated as -|g_b|².
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    batches = [(torch.tensor([[1.0], [1.0]]), torch.tensor([0.0, 2.0]))]
    with pytest.raises(ValueError, match=r"the gradient is estimated as -1 <= 0.*too small against its noise"):
        fb.measure_noise_scale(model, half_squared, batches, micro_batches=2)


class TwoHeads(nn.Module):
    """Batch norm (buffers), dropout, and a head the loss never reaches (its .grad stays None)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.1), nn.Linear(8, 1))
        self.unused = nn.Linear(4, 1)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("training", [True, False])
def test_parameters_grads_buffers_and_mode_are_as_before(training):
    torch.manual_seed(0)
    model = TwoHeads().train(training)
    model.body[0].weight.grad = torch.randn(8, 4)  # a half-accumulated gradient of the user's
    model.body[3].bias.grad = torch.full((1,), float("nan"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    grad_values = {n: g.clone() for n, g in grads.items() if g is not None}
    batches = [(torch.randn(16, 4), torch.randn(16)) for _ in range(3)]
    fb.measure_noise_scale(model, half_squared, batches)
    assert model.training is training
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name  # parameters and running statistics
    for name, p in model.named_parameters():
        assert p.grad is grads[name], name
        if p.grad is not None:
            assert torch.equal(p.grad, grad_values[name]) or p.grad.isnan().all(), name


def test_grads_are_restored_when_the_loss_raises():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=3)
    mine = torch.ones_like(model.weight)
    model.weight.grad = mine

    def failing(prediction, target):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fb.measure_noise_scale(model, failing, batches)
    assert model.weight.grad is mine and torch.equal(mine, torch.ones_like(mine))


def test_the_interval_brackets_the_estimate():
    model, batches, *_ = regression(8, 1.0, 1.0, n_batches=50)
    ns = fb.measure_noise_scale(model, half_squared, batches)
    low, high = ns.interval
    assert low < ns.b_simple < high
    # Fewer batches, a wider interval.
    few = fb.measure_noise_scale(model, half_squared, batches[:10])
    assert few.interval[1] - few.interval[0] > high - low


def test_max_batches_stops_drawing_batches():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=10, batch_size=32)
    drawn = []

    def source():
        for i, batch in enumerate(batches):
            drawn.append(i)
            yield batch

    ns = fb.measure_noise_scale(model, half_squared, source(), max_batches=3)
    assert (ns.batches, ns.samples, drawn) == (3, 3 * 32, [0, 1, 2])
    assert ns == fb.measure_noise_scale(model, half_squared, batches[:3])


def test_longer_tuples_and_a_window_loader_are_batches():
    series = np.sin(np.arange(1000, dtype=np.float32) / 7) + np.random.default_rng(0).normal(0, 0.3, 1000)
    loader = fb.WindowLoader(fb.SlidingWindows(series.astype(np.float32), window=10, horizon=1), batch_size=32,
                             shuffle=True, seed=0, drop_last=True)
    torch.manual_seed(0)
    model = nn.Linear(10, 1)
    ns = fb.measure_noise_scale(model, lambda p, y: (p - y).square().mean(), loader)
    assert ns.batches == 30 and ns.samples == 30 * 32  # 990 windows, the partial 31st batch dropped
    assert ns.b_simple > 0 and math.isfinite(ns.b_simple)
    loader.set_epoch(0)  # the same batches again
    extra = [(x, y, "meta") for x, y in loader]
    assert fb.measure_noise_scale(model, lambda p, y: (p - y).square().mean(), extra) == ns


def test_non_finite_batches_are_skipped_and_counted():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=6)
    poisoned = [(x.clone(), y) for x, y in batches]
    poisoned[2][0][5, 0] = float("inf")
    ns = fb.measure_noise_scale(model, half_squared, poisoned)
    assert (ns.skipped, ns.batches) == (1, 5)
    clean = fb.measure_noise_scale(model, half_squared, batches[:2] + batches[3:])
    assert ns.b_simple == clean.b_simple and ns.skipped == 1 and clean.skipped == 0
    with pytest.raises(ValueError, match=r"every batch had a non-finite gradient \(2 skipped\)"):
        fb.measure_noise_scale(model, half_squared, [poisoned[2], poisoned[2]])


def test_under_bf16_autocast_the_estimate_still_matches():
    model, batches, b_simple, *_ = regression(16, 0.5, 1.0, n_batches=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ns = fb.measure_noise_scale(model, lambda p, y: half_squared(p.float(), y), batches)
    assert ns.b_simple == pytest.approx(b_simple, rel=0.15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_estimate_matches_the_cpu_one():
    model, batches, *_ = regression(8, 1.0, 1.0, n_batches=20)
    cpu = fb.measure_noise_scale(model, half_squared, batches)
    on_gpu = fb.measure_noise_scale(model.cuda(), half_squared, batches)  # batches move to the model's device
    assert on_gpu.b_simple == pytest.approx(cpu.b_simple, rel=1e-3)


def _batches():
    return regression(4, 1.0, 1.0, n_batches=2, batch_size=8)[1]


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"model": "linear"}, TypeError, "model must be a torch.nn.Module, got 'linear' of type str"),
        ({"model": nn.ReLU()}, ValueError, "model has no parameters that require grad"),
        ({"loss_fn": 3}, TypeError, "loss_fn must be callable.*got 3 of type int"),
        ({"batches": 5}, TypeError, "batches must be an iterable of .* got 5 of type int"),
        ({"batches": []}, ValueError, "batches is empty"),
        ({"batches": [torch.ones(8, 4)]}, TypeError, "batches must yield .* got batch 0 of type Tensor"),
        ({"micro_batches": 9}, ValueError, "micro_batches must be <= the batch size, got micro_batches=9 but batch 0 "
                                           "has 8 samples"),
        ({"micro_batches": 0}, ValueError, "micro_batches must be an integer >= 2, got micro_batches=0"),
        ({"micro_batches": 2.0}, TypeError, "micro_batches must be an integer >= 2, got 2.0 of type float"),
        ({"max_batches": 0}, ValueError, "max_batches must be an integer >= 1, got max_batches=0"),
        ({"max_batches": True}, TypeError, "max_batches must be an integer >= 1, got True"),
        ({"loss_fn": lambda p, y: (p.squeeze(-1) - y).square()}, ValueError,
         r"loss_fn must return the batch's mean loss as a scalar tensor, got Tensor of shape \(2,\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    args = {"model": nn.Linear(4, 1, bias=False), "loss_fn": half_squared, "batches": _batches(), **kwargs}
    with pytest.raises(error, match=match):
        fb.measure_noise_scale(args.pop("model"), args.pop("loss_fn"), args.pop("batches"), **args)


# -- the online form -----------------------------------------------------------------------------------


def train_steps(model, gns, batches, *, parts=1, accumulate=None, loss_scale=1.0):
    """Backward passes at fixed parameters (no optimizer step), ``gns.step`` after each batch."""
    accumulate = parts > 1 if accumulate is None else accumulate
    for x, y in batches:
        size = len(x) // parts
        for i in range(parts):
            piece = slice(i * size, (i + 1) * size)
            (half_squared(model(x[piece]), y[piece]) * loss_scale / parts).backward()
            if accumulate:
                gns.accumulate()
        if loss_scale != 1.0:
            for p in model.parameters():
                p.grad /= loss_scale  # what GradScaler.unscale_ does
        gns.step(size * parts, loss_scale=loss_scale)
        model.zero_grad(set_to_none=True)


def ema(values, beta):
    """Adam's bias-corrected exponential moving average of ``values``."""
    average = 0.0
    for t, value in enumerate(values, 1):
        average = beta * average + (1 - beta) * value
    return average / (1 - beta**t)


def test_with_micro_batches_the_online_averages_are_bias_corrected_emas_of_each_batchs_estimate():
    model, batches, *_ = regression(6, 1.0, 1.0, n_batches=5, batch_size=64)
    gns = fb.GradientNoiseScale(model, beta=0.9, every=1)
    assert (gns.b_simple, gns.grad_sq, gns.trace_cov, gns.updates) == (None, None, None, 0)
    train_steps(model, gns, batches, parts=4)
    each = [fb.measure_noise_scale(model, half_squared, [batch]) for batch in batches]
    assert not gns.biased and (gns.updates, gns.skipped) == (5, 0)
    assert gns.grad_sq == pytest.approx(ema([e.grad_sq for e in each], 0.9), rel=1e-4)
    assert gns.trace_cov == pytest.approx(ema([e.trace_cov for e in each], 0.9), rel=1e-4)
    assert gns.b_simple == gns.trace_cov / gns.grad_sq


def test_without_micro_batches_consecutive_steps_are_differenced_and_flagged_biased():
    model, batches, *_ = regression(3, 1.0, 1.0, n_batches=2, batch_size=16)
    gns = fb.GradientNoiseScale(model, beta=0.5, every=1)
    train_steps(model, gns, batches[:1])
    assert gns.updates == 0 and gns.b_simple is None  # one gradient: nothing to difference yet
    train_steps(model, gns, batches[1:])
    assert gns.biased and gns.updates == 1
    # The two steps' gradients as two "parts" of one batch of 32: measure_noise_scale's formula.
    x, y = (torch.cat(t) for t in zip(*batches))
    whole = fb.measure_noise_scale(model, half_squared, [(x, y)], micro_batches=2)
    assert gns.grad_sq == pytest.approx(whole.grad_sq, rel=1e-4)
    assert gns.trace_cov == pytest.approx(whole.trace_cov, rel=1e-4)


def test_accumulating_one_micro_batch_per_step_is_the_differenced_estimator():
    model, batches, *_ = regression(5, 1.0, 1.0, n_batches=6, batch_size=32)
    plain, one_part = fb.GradientNoiseScale(model, every=1), fb.GradientNoiseScale(model, every=1)
    train_steps(model, plain, batches)
    train_steps(model, one_part, batches, accumulate=True)
    assert one_part.biased and one_part.updates == plain.updates == 5
    assert one_part.grad_sq == pytest.approx(plain.grad_sq, rel=1e-6)
    assert one_part.trace_cov == pytest.approx(plain.trace_cov, rel=1e-6)


@pytest.mark.parametrize("parts", [1, 4])
def test_the_online_form_matches_the_closed_form_at_fixed_parameters(parts):
    model, batches, b_simple, *_ = regression(8, 2.0, 1.0)
    gns = fb.GradientNoiseScale(model, beta=0.999, every=1)  # close to a plain mean over the 200 steps
    train_steps(model, gns, batches, parts=parts)
    assert gns.biased is (parts == 1)
    assert gns.b_simple == pytest.approx(b_simple, rel=0.15)


def test_the_online_form_leaves_the_gradients_as_the_optimizer_needs_them():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=3, batch_size=16)
    for parts in (1, 4):
        gns = fb.GradientNoiseScale(model, every=1)
        for x, y in batches:
            for i in range(parts):
                (half_squared(model(x[i::parts]), y[i::parts]) / parts).backward()
                if parts > 1:
                    gns.accumulate()
            grad = model.weight.grad.clone()
            gns.step(len(x))
            assert torch.equal(model.weight.grad, grad)
            model.zero_grad()


def test_a_loss_scale_measured_before_unscaling_gives_the_unscaled_figures():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=4, batch_size=32)
    plain, scaled = fb.GradientNoiseScale(model, every=1), fb.GradientNoiseScale(model, every=1)
    train_steps(model, plain, batches, parts=2)
    train_steps(model, scaled, batches, parts=2, loss_scale=1024.0)
    assert scaled.grad_sq == pytest.approx(plain.grad_sq, rel=1e-5)
    assert scaled.trace_cov == pytest.approx(plain.trace_cov, rel=1e-5)


def test_a_non_finite_step_is_skipped_and_counted():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=4, batch_size=32)
    gns = fb.GradientNoiseScale(model, every=1)
    train_steps(model, gns, batches[:2], parts=2)
    before = (gns.grad_sq, gns.trace_cov)
    x, y = batches[2]
    bad = x.clone()
    bad[0, 0] = float("nan")
    train_steps(model, gns, [(bad, y)], parts=2)
    assert (gns.skipped, gns.updates) == (1, 2) and (gns.grad_sq, gns.trace_cov) == before
    train_steps(model, gns, batches[3:], parts=2)
    assert (gns.skipped, gns.updates) == (1, 3) and gns.grad_sq != before[0]


@pytest.mark.parametrize("parts", [1, 2])
def test_every_third_step_updates_from_that_step_alone(parts):
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=9, batch_size=32)
    gns = fb.GradientNoiseScale(model, beta=0.5, every=3)
    train_steps(model, gns, batches, parts=parts)
    assert gns.updates == 3
    # Each update is that of steps 2-3, 5-6 and 8-9 alone (differenced) or of 3, 6 and 9 (micro-batches).
    each = []
    for end in (3, 6, 9):
        alone = fb.GradientNoiseScale(model, every=1)
        train_steps(model, alone, batches[end - 2:end] if parts == 1 else batches[end - 1:end], parts=parts)
        each.append((alone.grad_sq, alone.trace_cov))
    assert gns.grad_sq == pytest.approx(ema([e[0] for e in each], 0.5), rel=1e-6)
    assert gns.trace_cov == pytest.approx(ema([e[1] for e in each], 0.5), rel=1e-6)


def test_changing_every_mid_run_still_pairs_consecutive_steps():
    # every=2 measures its update step against the step before and leaves the buffer stale (the next
    # copy step refills it); at every=1 the next step must not be measured against that stale buffer.
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=7, batch_size=32)
    gns = fb.GradientNoiseScale(model, beta=0.5, every=2)
    train_steps(model, gns, batches[:4])  # updates from steps 1-2 and 3-4
    gns.every = 1
    train_steps(model, gns, batches[4:])  # step 5 refills the buffer; updates from 5-6 and 6-7
    assert gns.updates == 4
    each = []
    for first in (0, 2, 4, 5):
        alone = fb.GradientNoiseScale(model, every=1)
        train_steps(model, alone, batches[first:first + 2])
        each.append((alone.grad_sq, alone.trace_cov))
    assert gns.grad_sq == pytest.approx(ema([e[0] for e in each], 0.5), rel=1e-6)
    assert gns.trace_cov == pytest.approx(ema([e[1] for e in each], 0.5), rel=1e-6)


class Clock:
    """``perf_counter`` for the noise scale: the loop moves it on by hand, ``GradientNoiseScale`` by ``cost``."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def timed(monkeypatch, gns, clock, cost):
    """Each gradient read (one per update or copy step) costs ``cost`` seconds of ``clock``."""
    import fastbatch.noise.online as online

    monkeypatch.setattr(online, "perf_counter", clock)
    grads = gns._grads

    def slow():
        clock.now += cost
        return grads()

    monkeypatch.setattr(gns, "_grads", slow)


@pytest.mark.parametrize("parts", [1, 2])
def test_auto_every_keeps_the_noise_scale_within_its_share_of_the_step(monkeypatch, parts):
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=4, batch_size=32)
    gns = fb.GradientNoiseScale(model, beta=0.5, max_overhead=0.02)
    assert gns.every == 1 and gns.auto
    clock, rest, cost = Clock(), 0.010, 0.00065  # a 10 ms step; 0.65 ms per gradient read
    timed(monkeypatch, gns, clock, cost)
    chosen = []
    for step in range(300):
        clock.now += rest
        train_steps(model, gns, [batches[step % 4]], parts=parts)
        chosen.append(gns.every)
    assert chosen[:3] == [1, 1, 1]  # the first update has no whole cycle; three cycles before choosing
    if parts == 1:
        # At every=1 a cycle is one update, one read: 6.5 % of a step, so every=4 (1.6 %). Then a cycle
        # also has the copy step before its update: two reads, 13 % of one step, so every=7 (1.9 %).
        reads, settled = 2, 7
        assert chosen[3] == 4
    else:
        # Two micro-batches and the step read the gradient three times; no copy step: every=10 (1.95 %).
        reads, settled = 3, 10
    assert chosen[-1] == settled and set(chosen[-100:]) == {settled}
    assert reads * cost / (settled * rest) <= 0.02 < reads * cost / ((settled - 1) * rest)  # the smallest
    assert gns.updates == pytest.approx(300 / settled, abs=30)
    assert gns.biased == (parts == 1)


def test_auto_every_stays_at_one_when_the_noise_scale_is_cheap(monkeypatch):
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=4, batch_size=32)
    gns = fb.GradientNoiseScale(model)
    clock = Clock()
    timed(monkeypatch, gns, clock, 0.00009)  # 0.09 ms in a 10 ms step: inside the default 1 %
    for step in range(50):
        clock.now += 0.010
        train_steps(model, gns, [batches[step % 4]])
    assert gns.every == 1 and gns.updates == 49


def test_auto_every_on_the_real_clock_spares_a_fast_loop():
    # A four-weight model's step takes tens of microseconds: the noise scale's own few tens are far
    # more than 1 % of it, so "auto" must update on a fraction of the steps only. A slow loop (2 ms of
    # work per step) leaves it at every step.
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=4, batch_size=8)
    fast = fb.GradientNoiseScale(model)
    train_steps(model, fast, batches * 50)
    assert fast.every > 2 and fast.updates < 100
    slow = fb.GradientNoiseScale(model, max_overhead=0.5)
    for step in range(20):
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        train_steps(model, slow, [batches[step % 4]])
    assert slow.every == 1 and slow.updates == 19


def test_switching_estimators_restarts_the_averages():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=6, batch_size=32)
    gns = fb.GradientNoiseScale(model, every=1)
    train_steps(model, gns, batches[:4])
    assert gns.biased and gns.updates == 3
    train_steps(model, gns, batches[4:], parts=2)
    fresh = fb.GradientNoiseScale(model, every=1)
    train_steps(model, fresh, batches[4:], parts=2)
    assert not gns.biased and gns.updates == 2
    assert (gns.grad_sq, gns.trace_cov) == (fresh.grad_sq, fresh.trace_cov)


def test_b_simple_is_inf_while_the_averaged_gradient_is_not_positive():
    # Two parts with opposite gradients: |G|² is estimated as -1 (see the measure_noise_scale test).
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    gns = fb.GradientNoiseScale(model, every=1)
    train_steps(model, gns, [(torch.tensor([[1.0], [1.0]]), torch.tensor([0.0, 2.0]))], parts=2)
    assert gns.grad_sq == pytest.approx(-1.0) and gns.b_simple == math.inf


@pytest.mark.parametrize("parts", [1, 3])
def test_state_dict_resumes_the_averages(parts):
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=10, batch_size=48)
    straight = fb.GradientNoiseScale(model, beta=0.8, every=1)
    train_steps(model, straight, batches, parts=parts)
    first = fb.GradientNoiseScale(model, beta=0.8, every=1)
    train_steps(model, first, batches[:5], parts=parts)
    state = first.state_dict()
    assert state == eval(repr(state))  # plain Python values: fine for torch.save or JSON
    resumed = fb.GradientNoiseScale(model, beta=0.8, every=1)
    resumed.load_state_dict(state)
    assert (resumed.grad_sq, resumed.trace_cov, resumed.updates) == (first.grad_sq, first.trace_cov, first.updates)
    if parts == 1:  # the differenced estimator refills its one-step buffer first
        train_steps(model, resumed, batches[4:], parts=parts)
        assert resumed.updates == straight.updates
    else:
        train_steps(model, resumed, batches[5:], parts=parts)
    assert resumed.grad_sq == pytest.approx(straight.grad_sq, rel=1e-6)
    assert resumed.trace_cov == pytest.approx(straight.trace_cov, rel=1e-6)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda m: fb.GradientNoiseScale("net"), TypeError, "model must be a torch.nn.Module, got 'net'"),
        (lambda m: fb.GradientNoiseScale(nn.ReLU()), ValueError, "model has no parameters that require grad"),
        (lambda m: fb.GradientNoiseScale(m, beta=1.0), ValueError, r"beta must be a number in \[0, 1\), got beta=1.0"),
        (lambda m: fb.GradientNoiseScale(m, beta="0.9"), ValueError, "beta must be a number in .* got beta='0.9'"),
        (lambda m: fb.GradientNoiseScale(m, every=0), ValueError, "every must be an integer >= 1, got every=0"),
        (lambda m: fb.GradientNoiseScale(m, every="fast"), ValueError,
         "every must be an integer >= 1 or 'auto', got every='fast'"),
        (lambda m: fb.GradientNoiseScale(m, max_overhead=0), ValueError,
         r"max_overhead must be a number in \(0, 1\], got max_overhead=0"),
        (lambda m: fb.GradientNoiseScale(m, max_overhead="1%"), ValueError,
         r"max_overhead must be a number in \(0, 1\], got max_overhead='1%'"),
        (lambda m: fb.GradientNoiseScale(m).step(0), ValueError, "batch_size must be an integer >= 1, got batch_size=0"),
        (lambda m: fb.GradientNoiseScale(m).step(8.0), TypeError, "batch_size must be an integer >= 1, got 8.0"),
        (lambda m: fb.GradientNoiseScale(m).step(8, loss_scale=0), ValueError, "loss_scale must be a number > 0, got "
                                                                                "loss_scale=0"),
        (lambda m: fb.GradientNoiseScale(m).load_state_dict({"ema": [1, 2, 3]}), ValueError,
         r"state must be a dict with keys \['attempts', 'biased', 'ema', 'skipped', 'steps', 'version'\], got \['ema'\]"),
        (lambda m: fb.GradientNoiseScale(m).load_state_dict(
            {"version": 2, "biased": False, "ema": [0, 0, 0], "attempts": 0, "skipped": 0, "steps": 0}),
         ValueError, r"state\['version'\] must be 1, got 2"),
    ],
)
def test_bad_online_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call(nn.Linear(2, 1))


class Mixed(nn.Module):
    """A float32 layer, then a float64 one: the gradient buffer cannot be one flat tensor."""

    def __init__(self, first_dtype):
        super().__init__()
        self.first = nn.Linear(4, 3).to(first_dtype)
        self.second = nn.Linear(3, 1).double()

    def forward(self, x):
        return self.second(self.first(x.to(self.first.weight.dtype)).double())


def test_parameters_of_two_dtypes_are_measured_as_in_float64():
    torch.manual_seed(0)
    mixed, wide = Mixed(torch.float32), Mixed(torch.float64)
    wide.load_state_dict(mixed.state_dict())
    batches = [(torch.randn(32, 4), torch.randn(32, dtype=torch.float64)) for _ in range(5)]
    figures = []
    for model in (mixed, wide):
        gns = fb.GradientNoiseScale(model, every=1)
        train_steps(model, gns, batches)
        figures.append((gns.grad_sq, gns.trace_cov))
    assert figures[0] == pytest.approx(figures[1], rel=1e-5)


def test_the_examples_of_docs_batch_size_run(tmp_path, monkeypatch, capsys):
    from pathlib import Path
    import re

    page = (Path(__file__).resolve().parents[1] / "docs" / "batch-size.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", page, flags=re.M | re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    for index, block in enumerate(blocks):
        exec(compile(block, f"docs/batch-size.md block {index}", "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    assert "B_simple = " in printed and printed.rstrip().endswith("True")  # the online example's biased flag


def test_a_non_finite_gradient_skips_its_differenced_step_and_the_next():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=6, batch_size=32)
    gns = fb.GradientNoiseScale(model, every=1)
    train_steps(model, gns, batches[:3])
    before = (gns.grad_sq, gns.trace_cov)
    x, y = batches[3]
    bad = x.clone()
    bad[0, 0] = float("inf")
    train_steps(model, gns, [(bad, y)])  # differenced against the bad gradient: skipped
    train_steps(model, gns, batches[4:5])  # ... and so is the step after it
    assert (gns.updates, gns.skipped) == (2, 2) and (gns.grad_sq, gns.trace_cov) == before
    train_steps(model, gns, batches[5:])
    assert (gns.updates, gns.skipped) == (3, 2) and gns.grad_sq != before[0]


@pytest.mark.parametrize("parts", [1, 1.5, 4])
def test_the_cpu_arithmetic_agrees_with_the_tensor_code_of_other_devices(parts):
    # The compiled buffer and float averages of the CPU against the tensor operations run
    # elsewhere (on CUDA), here run on CPU tensors. 1.5: one part accumulated per step.
    model, batches, *_ = regression(6, 1.0, 0.5, n_batches=12, batch_size=32)
    figures = []
    for on_host in (True, False):
        gns = fb.GradientNoiseScale(model, beta=0.8, every=1)
        gns._on_host = on_host
        if parts == 1.5:
            train_steps(model, gns, batches, accumulate=True)
        else:
            train_steps(model, gns, batches, parts=parts)
        assert isinstance(gns._ema, list) is on_host
        figures.append((gns.grad_sq, gns.trace_cov, gns.updates, gns.biased, gns.state_dict()["ema"]))
    assert figures[0][:2] == pytest.approx(figures[1][:2], rel=1e-6)
    assert figures[0][2:4] == figures[1][2:4]
    assert figures[0][4] == pytest.approx(figures[1][4], rel=1e-6)


def test_a_state_saved_on_the_cpu_resumes_through_the_tensor_code():
    model, batches, *_ = regression(4, 1.0, 1.0, n_batches=8, batch_size=32)
    saved = fb.GradientNoiseScale(model, beta=0.7, every=1)
    train_steps(model, saved, batches[:4], parts=2)
    for on_host in (True, False):
        resumed = fb.GradientNoiseScale(model, beta=0.7, every=1)
        resumed._on_host = on_host
        resumed.load_state_dict(saved.state_dict())
        train_steps(model, resumed, batches[4:], parts=2)
        assert resumed.updates == 8 and isinstance(resumed._ema, list) is on_host
        if on_host:
            expected = (resumed.grad_sq, resumed.trace_cov)
    assert (resumed.grad_sq, resumed.trace_cov) == pytest.approx(expected, rel=1e-6)
