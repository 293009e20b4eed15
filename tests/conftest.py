"""Shared test settings: the hypothesis profiles and a scratch folder for memmaps."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# deadline=None: the first example of a new dtype/layout waits for Numba to
# compile a specialisation (about a second), which is not a slow test.
settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# A longer hunt, for a local run after changing a kernel: HYPOTHESIS_PROFILE=thorough.
settings.register_profile("thorough", parent=settings.get_profile("ci"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    """A folder for memmap files, shared by the examples of a hypothesis test."""
    return tmp_path_factory.mktemp("memmaps")
