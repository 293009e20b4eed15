"""fastbatch: sliding-window batches for time-series training, gathered by Numba kernels."""

from fastbatch.loader import WindowLoader
from fastbatch.windows import SlidingWindows

__version__ = "0.1.0"

__all__ = ["SlidingWindows", "WindowLoader", "__version__"]
