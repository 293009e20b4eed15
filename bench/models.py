"""Reference forecasting models and one training step, for the batch-size harness.

Every factory has the same signature, the one a user's own factory
(``--model module:function``) must have too::

    factory(window, horizon, n_features, n_targets, **size_options) -> torch.nn.Module

and the module maps ``x`` of shape ``(B, T, F)`` to ``(B, H, n_targets)``.
The models are small on purpose: they are there to put a realistic compute
and memory load behind the loader, not to forecast well.
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
from torch import nn

Factory = Callable[..., nn.Module]


class _Head(nn.Module):
    """A linear map from a feature vector to the ``(H, n_targets)`` forecast."""

    def __init__(self, in_features: int, horizon: int, n_targets: int) -> None:
        super().__init__()
        self.horizon, self.n_targets = horizon, n_targets
        self.linear = nn.Linear(in_features, horizon * n_targets)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).view(h.shape[0], self.horizon, self.n_targets)


class MLP(nn.Module):
    """The flattened window through ``layers`` hidden layers of ``hidden`` units (GELU)."""

    def __init__(self, window: int, horizon: int, n_features: int, n_targets: int, *,
                 hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        width = window * n_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = _Head(width, horizon, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN(nn.Module):
    """``layers`` 1-D convolutions over time (same padding, GELU), then a linear head on the flattened maps."""

    def __init__(self, window: int, horizon: int, n_features: int, n_targets: int, *,
                 channels: int = 64, layers: int = 3, kernel_size: int = 5) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(layers):
            blocks += [nn.Conv1d(width, channels, kernel_size, padding=kernel_size // 2), nn.GELU()]
            width = channels
        self.body = nn.Sequential(*blocks)
        # An even kernel with this padding adds one step per layer.
        steps = window + layers * (1 - kernel_size % 2)
        self.head = _Head(width * steps, horizon, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.transpose(1, 2))  # (B, F, T): Conv1d wants channels first
        return self.head(h.flatten(1))


class LSTM(nn.Module):
    """A ``layers``-deep LSTM of ``hidden`` units; the last step's state feeds the head."""

    def __init__(self, window: int, horizon: int, n_features: int, n_targets: int, *,
                 hidden: int = 64, layers: int = 1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = _Head(hidden, horizon, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


class Transformer(nn.Module):
    """A pre-norm Transformer encoder over the time steps, mean-pooled into the head."""

    def __init__(self, window: int, horizon: int, n_features: int, n_targets: int, *,
                 d_model: int = 64, heads: int = 4, layers: int = 2, ff: int = 128) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model must be a multiple of heads, got d_model={d_model}, heads={heads}")
        self.embed = nn.Linear(n_features, d_model)
        self.position = nn.Parameter(torch.randn(window, d_model) / math.sqrt(d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout=0.0, batch_first=True, norm_first=True)
        # Nested tensors are an inference fast path only; off, they warn about norm_first.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = _Head(d_model, horizon, n_targets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x) + self.position)
        return self.head(h.mean(dim=1))


MODELS: dict[str, Factory] = {"mlp": MLP, "cnn": CNN, "lstm": LSTM, "transformer": Transformer}


def resolve_factory(spec: str) -> Factory:
    """``"mlp"``, ``"cnn"``, ``"lstm"``, ``"transformer"`` or ``"module:function"`` -> the factory.

    ``module:function`` imports the user's module (its top-level code runs) and
    returns the named callable.
    """
    if spec in MODELS:
        return MODELS[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model must be one of {', '.join(MODELS)} or 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - the user's module can fail in any way as it runs
        raise ValueError(f"cannot import the model's module {module_name!r} ({type(error).__name__}: {error})") from None
    factory: Any = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {attr!r}")
    return factory


def build_model(spec: str, window: int, horizon: int, n_features: int, n_targets: int,
                **options: Any) -> nn.Module:
    """Build the model ``spec`` names and check that it is a ``torch.nn.Module``."""
    model = resolve_factory(spec)(window, horizon, n_features, n_targets, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


class TrainStep:
    """One training step: forward, MSE loss, backward, AdamW step.

    With ``bf16=True`` the forward pass and the loss run under
    ``torch.autocast(dtype=torch.bfloat16)`` on the model's device; the
    parameters and the optimiser state stay float32.
    """

    def __init__(self, model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 1e-2,
                 bf16: bool = False) -> None:
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.bf16 = bf16
        first = next(model.parameters(), None)
        self.device_type = first.device.type if first is not None else "cpu"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Run one step on the batch ``(x, y)``; return the loss (a detached scalar tensor)."""
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            prediction = self.model(x)
            loss = nn.functional.mse_loss(prediction.float(), y.reshape(prediction.shape).float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()
