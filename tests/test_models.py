import sys
import textwrap

import numpy as np
import pytest
import torch

from bench.models import MODELS, TrainStep, build_model, resolve_factory

WINDOW, HORIZON, FEATURES = 16, 4, 3


def toy_series(n: int = 2000) -> np.ndarray:
    """Three phase-shifted sines: the next steps follow from the window."""
    t = np.arange(n, dtype=np.float64)[:, None]
    return np.sin(2 * np.pi * t / 25 + np.arange(FEATURES)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_maps_windows_to_forecasts(name):
    torch.manual_seed(0)
    model = build_model(name, WINDOW, HORIZON, FEATURES, 2)
    assert model(torch.randn(5, WINDOW, FEATURES)).shape == (5, HORIZON, 2)


@pytest.mark.parametrize("name", ["cnn"])
def test_even_kernel_keeps_the_shape(name):
    model = build_model(name, WINDOW, HORIZON, FEATURES, FEATURES, kernel_size=4, layers=2)
    assert model(torch.randn(2, WINDOW, FEATURES)).shape == (2, HORIZON, FEATURES)


# Small sizes keep the test fast; the defaults only scale these up.
SMALL = {"mlp": {"hidden": 32}, "cnn": {"channels": 16, "layers": 2}, "lstm": {"hidden": 32},
         "transformer": {"d_model": 32, "ff": 64, "layers": 1}}


@pytest.fixture
def one_thread():
    # Tiny ops in two OpenMP threads stall at every barrier when the machine
    # is busy (up to 100x here); one thread keeps this test's time steady.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_loss_decreases_on_a_learnable_series(name, one_thread):
    torch.manual_seed(0)
    # Plain numpy windows: this tests the models, not the loader.
    spans = np.lib.stride_tricks.sliding_window_view(toy_series(), WINDOW + HORIZON, axis=0).transpose(0, 2, 1)
    spans = torch.from_numpy(spans[np.random.default_rng(0).permutation(len(spans))].copy())
    batches = [(b[:, :WINDOW], b[:, WINDOW:]) for b in spans.split(64)]
    step = TrainStep(build_model(name, WINDOW, HORIZON, FEATURES, FEATURES, **SMALL[name]), lr=1e-2)
    losses = [step(x, y).item() for x, y in batches[:30]]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.5 * first, (name, first, last)


def test_bf16_step_runs_and_keeps_float32_parameters():
    model = build_model("mlp", WINDOW, HORIZON, FEATURES, FEATURES, hidden=32)
    step = TrainStep(model, bf16=True)
    loss = step(torch.randn(8, WINDOW, FEATURES), torch.randn(8, HORIZON, FEATURES))
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_size_options_change_the_model():
    small = build_model("mlp", WINDOW, HORIZON, FEATURES, FEATURES, hidden=8)
    large = build_model("mlp", WINDOW, HORIZON, FEATURES, FEATURES, hidden=64, layers=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) > 10 * count(small)
    with pytest.raises(TypeError):
        build_model("mlp", WINDOW, HORIZON, FEATURES, FEATURES, no_such_option=1)


def test_user_factory_is_imported(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def tiny(window, horizon, n_features, n_targets, scale=1):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(window * n_features, horizon * n_targets),
                                       torch.nn.Unflatten(1, (horizon, n_targets)))
        def not_a_model(window, horizon, n_features, n_targets):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    model = build_model("my_models:tiny", WINDOW, HORIZON, FEATURES, FEATURES, scale=2)
    assert model(torch.randn(2, WINDOW, FEATURES)).shape == (2, HORIZON, FEATURES)
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        build_model("my_models:not_a_model", WINDOW, HORIZON, FEATURES, FEATURES)
    with pytest.raises(ValueError, match="no callable 'missing'"):
        resolve_factory("my_models:missing")


@pytest.mark.parametrize("spec", ["resnet", "no_such_module_xyz:f", ":f", "mod:"])
def test_bad_model_specs_say_what_is_allowed(spec):
    with pytest.raises(ValueError, match="model"):
        resolve_factory(spec)
