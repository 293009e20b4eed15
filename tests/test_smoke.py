import numpy as np
import torch

import fastbatch as fb


def test_textbook_case():
    series = np.arange(1, 1001, dtype=np.float32)
    loader = fb.WindowLoader(fb.SlidingWindows(series, window=10), batch_size=32)
    batches = list(loader)
    assert len(loader) == len(batches) == 31
    assert batches[0][0].shape == (32, 10) and batches[-1][0].shape == (30, 10)
    assert torch.equal(batches[0][0][0], torch.arange(1, 11, dtype=torch.float32))
    assert batches[-1][1][-1].item() == 1000.0
