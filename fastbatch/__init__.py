"""fastbatch: sliding-window batches for time-series training, gathered by Numba kernels."""

from fastbatch.adapt import AdaptiveBatchSize
from fastbatch.compat import collate
from fastbatch.loader import WindowLoader
from fastbatch.noise import GradientNoiseScale, measure_noise_scale
from fastbatch.order import BlockShuffle
from fastbatch.windows import SlidingWindows

__version__ = "0.1.0"

__all__ = [
    "AdaptiveBatchSize",
    "BlockShuffle",
    "GradientNoiseScale",
    "SlidingWindows",
    "WindowLoader",
    "__version__",
    "collate",
    "measure_noise_scale",
]
