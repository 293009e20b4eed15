"""The gradient noise scale (McCandlish et al. 2018): off the loop, and online in a training loop."""

from fastbatch.noise.measure import NoiseScale, measure_noise_scale
from fastbatch.noise.online import GradientNoiseScale

__all__ = ["GradientNoiseScale", "NoiseScale", "measure_noise_scale"]
