import os
import subprocess
import sys

import numpy as np
import pytest

from bench import cli
from bench.config import CPU_MAX_BATCH_SIZE, QUICK_MAX_BATCH_SIZE, BenchConfig, parse_batch_sizes, parse_size
from bench.harness import BenchError, plan_sizes, prepare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_of(argv, capsys) -> str:
    """The message of a command line that must be refused with exit status 2 and one error line."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("python -m bench: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("text,expected", [
    ("2GiB", 2 * 2**30), ("512MiB", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("2GB", 2 * 10**9),
    ("100", 100), ("64 kB", 64_000), ("1tib", 2**40), ("0.5KiB", 512),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["2G", "abc", "-1GiB", "0", "GiB", "1.2.3MB", ""])
def test_parse_size_refuses_ambiguous_or_bad_sizes(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_parse_batch_sizes():
    assert parse_batch_sizes("64, 32,128,32") == [32, 64, 128]
    for bad in ("32,,64", "0,1", "a", "-4", "1.5"):
        with pytest.raises(ValueError, match="positive integers"):
            parse_batch_sizes(bad)


@pytest.mark.parametrize("argv,fragment", [
    (["--memory-limit", "2G"], "invalid size '2G'"),
    (["--batch-sizes", "32,x"], "positive integers"),
    (["--window", "0"], "--window must be >= 1"),
    (["--steps", "many"], "--steps must be an integer"),
    (["--gpu-memory-fraction", "1.5"], "(0, 1]"),
    (["--model-options", "hidden"], "hidden=512"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
    (["--device", "cpu", "--gpu-memory-fraction", "0.5"], "--device cuda only"),
    (["--model", "resnet"], "model must be one of mlp"),
    (["--model", "no_such_module_xyz:build"], "cannot import module"),
    (["--model", "mlp", "--model-options", "wings=2"], "unexpected keyword argument 'wings'"),
    (["--series-length", "10"], "at least"),
    (["--batch-sizes", "99999999", "--series-length", "1000"], "exceeds the"),
])
def test_bad_options_give_one_line_errors(argv, fragment, capsys):
    assert fragment in error_of(argv, capsys)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert "sees no CUDA device" in error_of(["--device", "cuda"], capsys)


def test_data_file_errors(tmp_path, capsys):
    missing = str(tmp_path / "missing.npy")
    assert "no such file" in error_of(["--data", missing], capsys)
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert "pickled" in error_of(["--data", str(objects)], capsys)
    archive = tmp_path / "archive.npy"
    with open(archive, "wb") as f:
        np.savez(f, a=np.zeros(10))
    assert ".npz archive" in error_of(["--data", str(archive)], capsys)
    cube = tmp_path / "cube.npy"
    np.save(cube, np.zeros((4, 4, 4), dtype=np.float32))
    assert "shape (N,) or (N, F)" in error_of(["--data", str(cube)], capsys)
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((20, 2), dtype=np.float32))
    assert "need at least 72" in error_of(["--data", str(short)], capsys)
    series = tmp_path / "series.npy"
    np.save(series, np.zeros((200, 2), dtype=np.float32))
    assert "come from the file" in error_of(["--data", str(series), "--features", "3"], capsys)


def test_user_model_with_the_wrong_output_shape_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "wrong_model.py").write_text(
        "import torch\n"
        "def build(window, horizon, n_features, n_targets):\n"
        "    return torch.nn.Flatten()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "expected (2, 8, 8)" in error_of(["--model", "wrong_model:build"], capsys)


def test_help_documents_the_options_and_user_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--device", "--batch-sizes", "--max-batch-size", "--window", "--horizon", "--features",
                   "--series-length", "--data", "--model", "--steps", "--memory-limit", "--gpu-memory-fraction",
                   "--out", "--quick"):
        assert option in out
    assert "imports your module" in out and "allow_pickle=False" in out


def test_the_module_runs_as_a_command_with_one_line_errors():
    proc = subprocess.run([sys.executable, "-m", "bench", "--memory-limit", "lots"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "invalid size 'lots'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2  # the error, a pointer to --help


def args(*argv):
    return cli.config_from_args(cli.build_parser().parse_args(["--device", "cpu", *argv]))


def test_cpu_defaults_cap_the_sweep_and_keep_a_safety_limit():
    config = args()
    assert config.max_batch_size == CPU_MAX_BATCH_SIZE and config.memory_limit_from == "safety"
    assert config.memory_limit > 0 and config.steps == 20
    quick = args("--quick")
    assert quick.max_batch_size == QUICK_MAX_BATCH_SIZE and quick.steps < config.steps
    limited = args("--memory-limit", "1GiB")
    # With a limit of the user's own, the sweep goes on until the boundary.
    assert limited.max_batch_size is None and limited.memory_limit == 2**30 and limited.memory_limit_from == "user"
    assert args("--max-batch-size", "100").max_batch_size == 100


def test_plan_sizes():
    assert plan_sizes(BenchConfig(max_batch_size=100), 10**6) == ([1, 2, 4, 8, 16, 32, 64, 100], "max_batch_size")
    assert plan_sizes(BenchConfig(max_batch_size=None), 1000)[0][-2:] == [512, 1000]
    assert plan_sizes(BenchConfig(max_batch_size=None), 1000)[1] == "dataset"
    assert plan_sizes(BenchConfig(batch_sizes=[10, 20]), 1000) == ([10, 20], "batch_sizes")
    assert plan_sizes(BenchConfig(batch_sizes=[10, 2000]), 1000) == ([10], "dataset")
    assert plan_sizes(BenchConfig(max_batch_size=1024, quick=True), 10**6)[0] == [1, 4, 16, 64, 256, 1024]
    assert plan_sizes(BenchConfig(max_batch_size=2048, quick=True), 10**6)[0][-2:] == [1024, 2048]


def test_prepare_writes_the_synthetic_series_and_reads_user_data(tmp_path):
    prepared = prepare(BenchConfig(series_length=5000, features=3, max_batch_size=64))
    try:
        data = np.load(prepared.data_path, mmap_mode="r")
        assert data.shape == (5000, 3) and data.dtype == np.float32
        assert prepared.dataset["n_windows"] == 5000 - 64 - 8 + 1
        assert prepared.sizes == [1, 2, 4, 8, 16, 32, 64]
    finally:
        from bench.harness import cleanup

        cleanup(prepared)
    assert not os.path.exists(prepared.workdir)
    univariate = tmp_path / "u.npy"
    np.save(univariate, np.arange(500, dtype=np.int16))
    prepared = prepare(BenchConfig(data=str(univariate), max_batch_size=8))
    assert prepared.dataset["features"] == 1 and prepared.dataset["dtype"] == "int16"
    with pytest.raises(BenchError):
        prepare(BenchConfig(data=str(tmp_path / "nothing.npy")))
