"""The DataLoader baseline delivers where fastbatch does: on a GPU, its batches are copied to the device."""

import numpy as np
import pytest
import torch

from bench import baselines
from bench.baselines import WindowDataset, dataloader_stream, make_dataloader
from bench.config import BenchConfig

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def dataset():
    return WindowDataset(np.random.default_rng(0).random((500, 3), dtype=np.float32), window=8, horizon=2)


def test_the_stream_copies_each_batch_to_the_device(dataset):
    # "meta" stands in for a GPU: a tensor gets there only by being copied.
    stream = dataloader_stream(make_dataloader(dataset, 16, 0), device=torch.device("meta"))
    stream.start()
    for _ in range(40):  # past the end of the epoch (31 batches): the next epoch's batches are copied too
        x, y = stream.next()
        assert x.device.type == "meta" and y.device.type == "meta" and x.shape[1:] == (8, 3)
    samples, seconds = stream.span(5)
    assert 5 <= samples <= 80 and seconds > 0


def test_on_the_cpu_batches_stay_where_the_dataloader_made_them(dataset):
    for device in (None, "cpu", torch.device("cpu")):
        stream = dataloader_stream(make_dataloader(dataset, 16, 0), device=device)
        stream.start()
        assert stream.next()[0].device.type == "cpu"


@pytest.mark.parametrize("device_type,pinned", [("cuda", True), ("cpu", False)])
def test_the_trial_baseline_pins_and_copies_on_a_gpu(monkeypatch, device_type, pinned):
    from bench import trial

    seen = {}

    def fake_rate(dataset, batch_size, n_batches, workers=(0, 2), pin_memory=False, collate_fn=None, *,
                  repeats=1, device=None):
        seen.update(pin_memory=pin_memory, device=device)
        return 1000.0, 0

    monkeypatch.setattr(baselines, "best_dataloader_rate", fake_rate)
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    result = {}
    data = np.zeros((200, 2), np.float32)
    trial._measure_baseline(result, data, BenchConfig(window=8, horizon=2, baseline_workers=(0,)), 16, device)
    assert result["baseline_samples_per_sec"] == 1000.0
    assert seen == {"pin_memory": pinned, "device": device}


@pytest.mark.gpu
@gpu
def test_the_baseline_rate_on_a_gpu_includes_the_copy(dataset):
    stream = dataloader_stream(make_dataloader(dataset, 16, 0, pin_memory=True), device="cuda")
    stream.start()
    x, y = stream.next()
    assert x.is_cuda and y.is_cuda
    rate, workers = baselines.best_dataloader_rate(dataset, 16, 8, workers=(0,), pin_memory=True, device="cuda")
    assert rate > 0 and workers == 0
