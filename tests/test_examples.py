"""The examples run, and the forecasting one learns something real."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_co2_series_loads_with_gaps_filled():
    co2 = _load("train_forecaster").load_co2()
    assert co2.shape == (2284,)
    assert not (co2 != co2).any()  # no NaN left
    assert 310 < co2[0] < 320 and 365 < co2[-1] < 375  # ppmv, 1958 and 2001


def test_forecaster_beats_the_last_value_forecast(capsys):
    result = _load("train_forecaster").main(["--epochs", "5"])
    assert result["val_mse"] < 0.7 * result["naive_mse"]
    assert "val mse" in capsys.readouterr().out


def test_covariates_example_trains_on_the_employment_table_and_beats_the_last_value(capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("pandas")
    result = _load("lightning_covariates").main(["--max-steps", "30", "--quiet"])
    # In thousands of jobs (scaler.inverse applied): scaled units would be below 1.
    assert 10 < result["naive_mae"] < 1000
    assert result["val_mae"] < 0.6 * result["naive_mae"]
    out = capsys.readouterr().out
    assert "147 validation windows over 21 series" in out and "thousand jobs" in out
