import json

from bench import hardware


def test_profile_names_the_machine_and_measures_its_limits():
    profile = hardware.profile("cpu", quick=True)
    json.dumps(profile)  # JSON-ready as it is
    assert profile["cpu"] and profile["cores"]["usable"] >= 1 and profile["memory_bytes"] > 2**28
    assert set(profile["versions"]) == {"fastbatch", "torch", "numba", "numpy"}
    assert profile["numba_threading_layer"]
    # Any machine copies memory at more than 100 MB/s and less than 10 TB/s.
    assert 1e8 < profile["memcpy_bytes_per_sec"] < 1e13
    assert profile["h2d_pinned_bytes_per_sec"] is None


def test_memcpy_bandwidth_of_a_small_buffer():
    assert hardware.memcpy_bandwidth(1 << 20, repeats=2) > 1e8
