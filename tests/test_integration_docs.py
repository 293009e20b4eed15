"""docs/integration.md runs as written, and so do the Lightning and DDP examples.

Every ```python block of docs/integration.md is executed; the blocks of one
``##`` section run in order in one namespace, in a scratch folder.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import sys
from pathlib import Path

import pytest

# Lightning 2.6 on torch 2.13 warns about torch's own pytree API (not ours to fix), and
# about resuming without the callback that wrote the checkpoint (on purpose here).
pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
              pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")]

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "integration.md"
HAS_LIGHTNING = importlib.util.find_spec("lightning") is not None


def sections() -> dict[str, list[str]]:
    """``{section title: [python blocks]}`` of docs/integration.md."""
    out: dict[str, list[str]] = {}
    title = "(top)"
    for part in re.split(r"^(## .+)$", DOC.read_text(), flags=re.M):
        if part.startswith("## "):
            title = part[3:].strip()
            continue
        blocks = re.findall(r"^```python\n(.*?)^```", part, flags=re.M | re.S)
        if blocks:
            out[title] = blocks
    return out


SECTIONS = sections()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_section_the_issue_names_has_a_runnable_snippet():
    titles = " ".join(SECTIONS)
    for topic in ("Many series", "Out-of-core", "O(1)", "DataLoader", "Distributed", "Lightning", "Resum"):
        assert topic in titles, topic


@pytest.mark.parametrize("title", sorted(SECTIONS))
def test_the_snippets_of_a_section_run(title, tmp_path, monkeypatch):
    code = SECTIONS[title]
    if "lightning" in "".join(code) and not HAS_LIGHTNING:
        pytest.skip("Lightning is not installed (pip install lightning; the dev extra has it)")
    monkeypatch.chdir(tmp_path)
    if "init_process_group" in "".join(code):
        # What torchrun would set, for a group of one process.
        for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0",
                               WORLD_SIZE="1", LOCAL_RANK="0").items():
            monkeypatch.setenv(key, value)
    namespace: dict = {"__name__": f"integration_doc_{len(title)}"}
    for k, block in enumerate(code):
        exec(compile(block, f"{DOC.name}[{title} #{k}]", "exec"), namespace)


@pytest.mark.skipif(not HAS_LIGHTNING, reason="Lightning is not installed (the dev extra has it)")
def test_the_lightning_example_trains_and_resumes_mid_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    sys.modules.pop("lightning_train", None)
    import lightning_train

    common = ["--quiet", "--accelerator", "cpu", "--devices", "1"]
    full = lightning_train.main(["--max-steps", "10", *common])
    assert len(full.batches_seen) == 10
    # Stop after 4 steps, checkpoint, and resume: the 6 batches after the checkpoint are the same.
    ckpt = str(tmp_path / "mid.ckpt")
    head = lightning_train.main(["--max-steps", "4", "--save", ckpt, *common])
    rest = lightning_train.main(["--max-steps", "10", "--ckpt-path", ckpt, *common])
    assert head.batches_seen == full.batches_seen[:4]
    assert rest.batches_seen == full.batches_seen[4:]
    # A checkpoint written by ModelCheckpoint during training (pre-emption's usual case) resumes the same.
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    every = ModelCheckpoint(dirpath=tmp_path / "every", every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(max_steps=7, accelerator="cpu", devices=1, logger=False, callbacks=[every],
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(lightning_train.Forecaster())
    step3 = next((tmp_path / "every").glob("*step=3*.ckpt"))
    rest = lightning_train.main(["--max-steps", "10", "--ckpt-path", str(step3), *common])
    assert rest.batches_seen == full.batches_seen[3:]


@pytest.mark.slow
def test_the_out_of_core_benchmark_runs_small(tmp_path):
    from bench import outofcore

    result = outofcore.main(["--gib", "0.02", "--budget", "20000", "--repeats", "1", "--batch-size", "512",
                             "--dir", str(tmp_path)])
    assert result["memory"]["delivered"] == result["memory"]["windows"]
    assert [r["order"] for r in result["throughput"]] == ["sequential", "block", "full shuffle"]
    assert not list(tmp_path.glob("*.npy"))  # the file is removed


@pytest.mark.slow
def test_the_adapter_benchmark_runs_small():
    from bench import adapter

    result = adapter.main(["--steps", "20000", "--seconds", "0.2", "--repeats", "1", "--threads", "1"])
    assert set(result["windows_per_s"]) == {"per-window", "adapter", "WindowLoader"}
    assert all(v > 0 for v in result["windows_per_s"].values())
