"""The gradient buffer of the noise scale: its compiled loops against plain numpy, and against the tensor code.

``squares`` and ``difference_into`` accumulate in float64; the reference
sums the same values upcast to float64 with numpy, so the two agree to a few
units of float64 rounding, whatever the number of elements.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastbatch.noise._buffer import GradientBuffer, difference_into, squares

FLOATS = st.floats(-1e6, 1e6, width=32)
SHAPES = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40)


def pair(draw, dtype):
    shape = draw(SHAPES)
    a = draw(hnp.arrays(dtype, shape, elements=FLOATS))
    b = draw(hnp.arrays(dtype, shape, elements=FLOATS))
    return a, b


@given(st.data(), st.sampled_from([np.float32, np.float64]), st.sampled_from([True, False, None]))
def test_difference_into_is_the_three_float64_dots_then_a_copy(data, dtype, write):
    a, b = pair(data.draw, dtype)
    wide_a, wide_b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    expected = (wide_a @ wide_a, wide_a @ wide_b, wide_b @ wide_b)
    scale = max(wide_a @ wide_a, wide_b @ wide_b, 1.0)
    a_before, b_before = a.copy(), b.copy()
    got = difference_into(a, b) if write is None else difference_into(a, b, write)  # None: the default
    assert np.allclose(got, expected, rtol=1e-12, atol=1e-12 * scale)
    assert np.array_equal(a, a_before)  # a untouched; b now holds a, or (write=False) what it held
    assert np.array_equal(b, b_before if write is False else a_before)


@given(st.data(), st.sampled_from([np.float32, np.float64]))
def test_squares_is_the_float64_sum_of_squares(data, dtype):
    a = data.draw(hnp.arrays(dtype, data.draw(SHAPES), elements=FLOATS))
    wide = a.astype(np.float64).ravel()
    assert squares(a.ravel()) == pytest.approx(wide @ wide, rel=1e-12, abs=1e-300)


def test_a_non_finite_element_makes_the_sums_non_finite():
    for bad in (np.nan, np.inf, -np.inf):
        a, b = np.ones(1000, np.float32), np.ones(1000, np.float32)
        a[517] = bad
        assert not np.isfinite(difference_into(a, b)[0])
        assert not np.isfinite(squares(a))


def test_a_small_difference_of_large_gradients_is_measured_to_float64_accuracy():
    # |g - h|² as |g|² - 2 g·h + |h|²: here 1e-8 of |g|², the large sums cancel by eight digits
    # and leave the difference good to about 1e-6 (float32 sums would have left nothing).
    rng = np.random.default_rng(0)
    h = rng.standard_normal(200_000).astype(np.float32)
    g = (h + np.float32(1e-4) * rng.standard_normal(h.size).astype(np.float32)).astype(np.float32)
    exact = np.sum((g.astype(np.float64) - h.astype(np.float64)) ** 2)
    gg, gh, hh = difference_into(g, h.copy())
    assert gg - 2 * gh + hh == pytest.approx(exact, rel=1e-5)


def params_of_shapes(*shapes, dtype=torch.float32):
    return [torch.zeros(shape, dtype=dtype) for shape in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_buffer_differences_grads_of_any_layout_against_what_it_held(dtype):
    params = params_of_shapes((7, 5), (5,), (3, 4, 2), (1,), dtype=dtype)
    buffer = GradientBuffer(params)
    assert buffer.fused
    gen = torch.Generator().manual_seed(0)
    first = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
    buffer.copy_(first)
    second = [torch.randn(p.shape, generator=gen, dtype=dtype) for p in params]
    second[0] = torch.randn(5, 7, generator=gen, dtype=dtype).t()  # not contiguous
    second[2] = second[2].requires_grad_()  # a gradient that is part of a graph (create_graph=True)
    flat = [torch.cat([t.detach().reshape(-1).double() for t in ts]) for ts in (second, first)]
    got = buffer.difference(second)
    expected = [(a @ b).item() for a, b in ((flat[0], flat[0]), (flat[0], flat[1]), (flat[1], flat[1]))]
    assert got == pytest.approx(expected, rel=1e-12)
    assert all(torch.equal(v, g.detach()) for v, g in zip(buffer.views, second))
    assert buffer.squared_norm().item() == pytest.approx((flat[0] @ flat[0]).item(), rel=1e-12)


def test_half_precision_gradients_are_held_in_float32():
    params = params_of_shapes((4, 3), (3,), dtype=torch.bfloat16)
    buffer = GradientBuffer(params)
    assert buffer.fused and buffer.views[0].dtype == torch.float32
    grads = [torch.full(p.shape, 1.5, dtype=torch.bfloat16) for p in params]
    assert buffer.difference(grads) == (15 * 2.25, 0.0, 0.0)
    assert buffer.difference(grads) == (15 * 2.25, 15 * 2.25, 15 * 2.25)


def test_without_keep_the_buffer_is_measured_against_and_left_as_it_was():
    params = params_of_shapes((6, 4), (4,))
    buffer = GradientBuffer(params)
    buffer.copy_([torch.ones(p.shape) for p in params])
    twos = [torch.full(p.shape, 2.0) for p in params]
    assert buffer.difference(twos, keep=False) == (28 * 4.0, 28 * 2.0, 28 * 1.0)
    assert all(torch.equal(v, torch.ones(v.shape)) for v in buffer.views)
    assert buffer.difference(twos) == (28 * 4.0, 28 * 2.0, 28 * 1.0)  # the default keeps: now twos
    assert all(torch.equal(v, torch.full(v.shape, 2.0)) for v in buffer.views)


def test_the_fused_and_the_tensor_buffers_agree():
    params = params_of_shapes((64, 33), (33,), (33, 1))
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) for p in params] for _ in range(2)]
    fused, plain = GradientBuffer(params), GradientBuffer(params, fuse=False)
    assert fused.fused and not plain.fused
    with pytest.raises(RuntimeError, match="fused"):
        plain.difference(grads[0])
    for buffer in (fused, plain):
        buffer.copy_(grads[0])
    assert fused.squared_norm().item() == pytest.approx(plain.squared_norm().item(), rel=1e-6)
    gg, gh, hh = fused.difference(grads[1])
    plain.sub_(grads[1])
    assert gg - 2 * gh + hh == pytest.approx(plain.squared_norm().item(), rel=1e-6)
