import os
import subprocess
import sys
import time

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


# (command line, the option and the value the error must name, what it must say).
BAD_OPTIONS = [
    (["--device", "tpu"], "--device", "tpu", "must be cpu, cuda or cuda:N"),
    (["--device", "cuda:x"], "--device", "cuda:x", "must be cpu, cuda or cuda:N"),
    (["--batch-sizes", "32,x"], "--batch-sizes", "32,x", "positive integers"),
    (["--batch-sizes", "0"], "--batch-sizes", "0", "positive integers"),
    (["--batch-sizes", "99999999", "--series-length", "1000"], "--batch-sizes", "99999999", "exceeds the 929 windows"),
    (["--max-batch-size", "0"], "--max-batch-size", "0", "integer >= 1"),
    (["--max-batch-size", "big"], "--max-batch-size", "big", "must be an integer"),
    (["--model", "resnet"], "--model", "resnet", "must be one of mlp, cnn, lstm, transformer"),
    (["--model", "no_such_module_xyz:build"], "--model", "no_such_module_xyz:build", "cannot import"),
    (["--model", "json:no_such_factory"], "--model", "json:no_such_factory", "no callable 'no_such_factory'"),
    (["--model-options", "hidden"], "--model-options", "hidden", "hidden=512"),
    (["--model-options", "wings=2"], "--model-options", "wings=2", "unexpected keyword argument 'wings'"),
    (["--model-options", "hidden=wide"], "--model-options", "hidden=wide", "TypeError"),
    (["--steps", "many"], "--steps", "many", "must be an integer"),
    (["--steps", "1"], "--steps", "1", "integer >= 2"),
    (["--window", "0"], "--window", "0", "integer >= 1"),
    (["--window", "1.5"], "--window", "1.5", "must be an integer"),
    (["--horizon", "-3"], "--horizon", "-3", "integer >= 1"),
    (["--features", "0"], "--features", "0", "integer >= 1"),
    (["--series-length", "10"], "--series-length", "10", "at least window + horizon = 72"),
    (["--series-length", "100000000000"], "--series-length", "100000000000", "would take 2980 GiB"),
    (["--memory-limit", "2G"], "--memory-limit", "2G", "invalid size"),
    (["--memory-limit", "0"], "--memory-limit", "0", "more than 0 bytes"),
    (["--memory-limit", "1000TiB"], "--memory-limit", "1000TiB", "must be at most this machine's memory"),
    (["--memory-limit", "99999999999999999999"], "--memory-limit", "99999999999999999999", "machine's memory"),
    (["--gpu-memory-fraction", "1.5"], "--gpu-memory-fraction", "1.5", "(0, 1]"),
    (["--gpu-memory-fraction", "half"], "--gpu-memory-fraction", "half", "finite number"),
    (["--gpu-memory-fraction", "0.5"], "--gpu-memory-fraction", "cuda", "applies to --device cuda only"),
    (["--tolerance", "1"], "--tolerance", "1", "(0, 1)"),
    (["--tolerance", "nan"], "--tolerance", "nan", "finite number"),
    (["--prefetch", "-1"], "--prefetch", "-1", "integer >= 0"),
    (["--trial-timeout", "0"], "--trial-timeout", "0", "seconds > 0"),
    (["--trial-timeout", "inf"], "--trial-timeout", "inf", "finite number"),
    (["--seed", "-1"], "--seed", "-1", "integer in [0, 18446744073709551615]"),
    (["--seed", "1e3"], "--seed", "1e3", "must be an integer"),
    (["--features", "3", "--data", "series.npy"], "--features", "3", "the file gives the series"),
    (["--out", os.path.abspath(__file__)], "--out", os.path.abspath(__file__), "is a file"),
    (["--out", "/proc/no-such-process/results"], "--out", "/proc/no-such-process/results", "cannot create"),
    (["--no-such-option", "3"], "--no-such-option", "3", "unrecognized arguments"),
    (["--window"], "--window", "", "expected one argument"),
]


@pytest.mark.parametrize("argv,option,value,fragment", BAD_OPTIONS, ids=[" ".join(c[0])[-40:] for c in BAD_OPTIONS])
def test_bad_options_give_one_line_errors_naming_option_and_value(argv, option, value, fragment, capsys):
    line = error_of(["--device", "cpu", *argv], capsys)
    assert option in line and value in line and fragment in line, line


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused(capsys):
    assert "sees no CUDA device" in error_of(["--device", "cuda"], capsys)


class Unpickled:
    """An object whose unpickling makes the folder ``marker``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def pickled_objects(path, marker):
    np.save(path, np.array([Unpickled(str(marker)), 1.0], dtype=object), allow_pickle=True)


def npz(path):
    with open(path, "wb") as f:
        np.savez(f, a=np.zeros(10))


def truncated(path):
    np.save(path, np.zeros((1000, 3), dtype=np.float32))
    path.write_bytes(path.read_bytes()[:500])


# (how to make the file, what the one-line error must say)
BAD_DATA = {
    "missing": (lambda path: None, "no such file"),
    "folder": (lambda path: path.mkdir(), "is a folder"),
    "csv": (lambda path: path.write_text("1,2,3\n4,5,6\n"), "not a .npy file"),
    "pickled": (lambda path: pickled_objects(path, path.parent / "unpickled"), "holds Python objects (pickled)"),
    "npz": (npz, ".npz archive"),
    "3-d": (lambda path: np.save(path, np.zeros((4, 4, 4), np.float32)), "shape (N,) or (N, F), got shape (4, 4, 4)"),
    "empty": (lambda path: np.save(path, np.zeros(0, np.float32)), "empty array of shape (0,)"),
    "no-features": (lambda path: np.save(path, np.zeros((100, 0), np.float32)), "empty array of shape (100, 0)"),
    "complex": (lambda path: np.save(path, np.zeros(100, np.complex64)), "got dtype complex64"),
    "truncated": (truncated, "not a readable .npy array"),
    "short": (lambda path: np.save(path, np.zeros((20, 2), np.float32)), "need at least 72"),
}


@pytest.mark.parametrize("kind", list(BAD_DATA))
def test_malformed_data_files_give_one_line_errors(kind, tmp_path, capsys):
    make, fragment = BAD_DATA[kind]
    path = tmp_path / "series.npy"
    make(path)
    line = error_of(["--device", "cpu", "--data", str(path)], capsys)
    assert f"--data {str(path)!r}" in line and fragment in line, line
    assert not (tmp_path / "unpickled").exists()


def test_data_is_never_unpickled(tmp_path):
    """The real command on a pickled object array: refused, and the pickle's payload never runs."""
    path, marker = tmp_path / "objects.npy", tmp_path / "unpickled"
    pickled_objects(path, marker)
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cpu", "--data", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds Python objects (pickled)" in proc.stderr.splitlines()[0]
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the test's own check: unpickling this file does make the folder
    assert marker.is_dir()


def test_user_model_with_the_wrong_output_shape_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "wrong_model.py").write_text(
        "import torch\n"
        "def build(window, horizon, n_features, n_targets):\n"
        "    return torch.nn.Flatten()\n"
    )
    monkeypatch.chdir(tmp_path)  # where the user's module is, as for `python -m bench` run beside it
    assert "expected (2, 8, 8)" in error_of(["--model", "wrong_model:build"], capsys)


# (the user's module, what the one-line error must say): none of them may end or hang the harness.
HOSTILE_MODELS = {
    "exits": ("import sys\nsys.exit(3)\n", "called sys.exit(3) while it was imported or built"),
    "parses argv": ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--lr', required=True)\n"
                    "p.parse_args()\n", "called sys.exit(2) while it was imported or built"),
    "exits in the factory": ("import sys\ndef build(*args):\n    raise SystemExit('done')\n",
                             "called sys.exit('done')"),
    "dies": ("import os\nos._exit(5)\n", "the process checking the model ended with code 5"),
    "hangs": ("import time\ndef build(*args):\n    time.sleep(600)\n",
              "took more than --trial-timeout 5 s; killed"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_MODELS))
def test_a_model_module_that_exits_dies_or_hangs_is_one_error_naming_model(kind, tmp_path, monkeypatch, capsys):
    code, fragment = HOSTILE_MODELS[kind]
    (tmp_path / "hostile.py").write_text(code + ("def build(*args):\n    pass\n" if "def build" not in code else ""))
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    timeout = 5 if kind == "hangs" else 120  # importing torch alone takes seconds on a busy machine
    line = error_of(["--model", "hostile:build", "--trial-timeout", str(timeout), "--series-length", "1000"], capsys)
    assert "--model hostile:build" in line and fragment in line, line
    assert time.monotonic() - started < 120


def test_help_documents_the_options_user_code_and_pickles():
    proc = subprocess.run([sys.executable, "-m", "bench", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    out = " ".join(proc.stdout.split())  # argparse wraps the lines
    for action in cli.build_parser()._actions:
        assert all(option in out for option in action.option_strings)
    assert "--model module:function imports your module (its top-level code runs)" in out
    assert "imports your module and so runs its code" in out  # the --model line itself
    assert "allow_pickle=False (never unpickled)" in out
    assert "130 after Ctrl-C or SIGTERM" in out


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


def test_a_float16_series_is_accepted_as_fastbatch_accepts_it(tmp_path):
    half = tmp_path / "half.npy"
    np.save(half, np.zeros((500, 3), np.float16))
    prepared = prepare(BenchConfig(data=str(half), max_batch_size=8))
    try:
        assert prepared.dataset["dtype"] == "float16" and prepared.dataset["n_windows"] == 500 - 64 - 8 + 1
        assert prepared.dataset["bytes_per_window"] == (64 + 8) * 3 * 2
    finally:
        from bench.harness import cleanup

        cleanup(prepared)


FAKE_PROFILE = {"cpu": "Test CPU", "cores": {"logical": 2, "physical": 2, "usable": 2}, "memory_bytes": 2**33,
                "versions": {"fastbatch": "0", "torch": "0", "numba": "0", "numpy": "0"},
                "numba_threading_layer": "omp", "gpu": None, "memcpy_bytes_per_sec": 1e10,
                "h2d_pinned_bytes_per_sec": None}


def fake_sweep(monkeypatch, during=None):
    """Trials and the profile replaced by instant fakes; ``during()`` runs inside the first trial."""
    from bench import hardware, trial

    def run_trial(config, size, path, *, role, **kwargs):
        if during is not None and not calls:
            during()
        calls.append(size)
        return {"batch_size": size, "status": "ok", "role": role, "loader_samples_per_sec": 1e5,
                "train_samples_per_sec": 1e4, "data_wait_s": 0.0, "compute_s": 1.0, "peak_host_bytes": 2**28}

    calls: list[int] = []
    monkeypatch.setattr(trial, "run_trial", run_trial)
    monkeypatch.setattr(hardware, "profile_in_child", lambda *args, **kwargs: dict(FAKE_PROFILE))
    return calls


def test_user_text_with_brackets_is_printed_as_it_is(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "runs[bold]" / "[red]x"
    folder.mkdir(parents=True)
    data, out = folder / "series[1].npy", folder / "out[blue]"
    np.save(data, np.random.default_rng(0).random((600, 2), dtype=np.float32))
    fake_sweep(monkeypatch)
    assert cli.main(["--device", "cpu", "--data", str(data), "--batch-sizes", "4,8", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert str(data) in " ".join(captured.err.split()), captured.err
    assert str(out / "results.json") in captured.out.replace("\n", "")
    assert (out / "results.json").exists()


def test_out_replaced_by_a_file_mid_sweep_is_one_error_and_the_results_are_kept(tmp_path, monkeypatch, capsys):
    import json
    import shutil

    out = tmp_path / "out"

    def replace_with_a_file():
        shutil.rmtree(out)
        out.write_text("not a folder any more")

    fake_sweep(monkeypatch, during=replace_with_a_file)
    assert cli.main(["--device", "cpu", "--series-length", "600", "--batch-sizes", "4,8", "--no-goodput",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line, = [line for line in err.splitlines() if line.startswith("error: --out")]
    assert f"--out {str(out)!r}: cannot write the results there" in line
    rescued = line.rsplit("they were written to ", 1)[1].removesuffix(" instead")
    try:
        assert [r["batch_size"] for r in json.loads(open(os.path.join(rescued, "results.json")).read())["results"]] \
            == [4, 8]
    finally:
        shutil.rmtree(rescued)


def _employment_table(path):
    """Six monthly series in long format, written as Parquet: the kind of table --data takes with --id etc."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    parts = [pd.DataFrame({"sector": f"s{k}", "month": np.arange(150), "jobs": 100 * k + rng.random(150).cumsum(),
                           "total": rng.random(150)}) for k in range(6)]
    pd.concat(parts).sample(frac=1, random_state=0).to_parquet(path)
    return path


def test_a_table_is_profiled_with_its_columns_named(tmp_path):
    """python -m bench --data table.parquet --id --time --target [--past]: a real sweep over the table's windows."""
    import json

    data = _employment_table(tmp_path / "jobs.parquet")
    out = tmp_path / "out"
    assert cli.main(["--device", "cpu", "--data", str(data), "--id", "sector", "--time", "month", "--target", "jobs",
                     "--past", "total", "--window", "12", "--horizon", "3", "--batch-sizes", "4,16", "--steps", "3",
                     "--no-goodput", "--no-baseline", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"]["source"] == str(data) and results["dataset"]["features"] == 2
    assert results["dataset"]["n_windows"] == 6 * (150 - 12 - 3 + 1)
    assert [(r["batch_size"], r["status"]) for r in results["results"]] == [(4, "ok"), (16, "ok")]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--id", "sector"], "--id: name columns of a table; give --data a .parquet"),
        (["--data", "TABLE", "--id", "sector", "--target", "jobs"], "is a table: --time must name its column"),
        (["--data", "TABLE", "--time", "month", "--target", "nope"], "nope"),
    ],
)
def test_table_options_are_checked_naming_the_option(tmp_path, capsys, argv, match):
    table = str(_employment_table(tmp_path / "jobs.parquet"))
    argv = [table if a == "TABLE" else a for a in argv]
    try:
        code = cli.main(["--device", "cpu", "--no-goodput", "--batch-sizes", "4", *argv])
    except SystemExit as stop:  # argument errors end in the parser, as argparse's own do
        code = stop.code
    assert code == 2
    assert match in " ".join(capsys.readouterr().err.split())
