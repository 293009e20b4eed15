"""The online GradientNoiseScale's cost: a reference model's training step with and without it, same run.

pytest-benchmark times the step with the noise scale measured (``every="auto"``, the
default, and the fixed every=1 and every=4); the figure to
read is ``extra_info["noise_scale_step_ratio"]``: the median, over pairs of
adjacent rounds (one with ``GradientNoiseScale.step``, one without, in
alternating order), of the time with over the time without; a drift of the
machine's speed cancels within a pair.
Beside it ``noise_scale_own_share``: the time inside ``GradientNoiseScale.step``
over the time of the rest of the step, steadier on a busy machine. Both are
printed::

    .venv/bin/python -m pytest -q -s -p no:cacheprovider tests/benchmarks/test_bench_noise.py \\
        --benchmark-columns=median,rounds
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

import fastbatch as fb
from bench.models import TrainStep, build_model
from test_models import one_thread  # noqa: F401 - the fixture: one intra-op thread, steady times on a busy machine

# (model, batch size, window): the reference models of bench/models.py at their default sizes;
# windows and batches sized so that a step of each takes milliseconds to tens of them on 2 cores.
SETTINGS = [("mlp", 256, 64), ("mlp", 1024, 64), ("cnn", 64, 32), ("lstm", 64, 32), ("transformer", 32, 32)]
ROUNDS = 7
RATIO_ROUNDS = 31


class Training:
    """A reference model's training step (``bench.models.TrainStep``: MSE, AdamW); the noise scale on demand."""

    def __init__(self, name: str, batch_size: int, window: int, every: int | str) -> None:
        torch.manual_seed(0)
        self.model = build_model(name, window, 1, 1, 1)
        self.train = TrainStep(self.model)
        self.x, self.y = torch.randn(batch_size, window, 1), torch.randn(batch_size, 1, 1)
        self.noise_scale = fb.GradientNoiseScale(self.model, every=every)
        self.measuring = False
        self.in_noise_scale = 0.0  # thread CPU seconds spent in GradientNoiseScale.step
        # Between the backward pass and the optimizer's step, where TrainStep leaves no other way in.
        self.train.optimizer.register_step_pre_hook(self._before_optimizer_step)

    def _before_optimizer_step(self, *_) -> None:
        if self.measuring:
            start = time.thread_time()
            self.noise_scale.step(len(self.x))
            self.in_noise_scale += time.thread_time() - start

    def steps(self, n: int, *, measuring: bool) -> None:
        self.measuring = measuring
        for _ in range(n):
            self.train(self.x, self.y)


def steps_per_round(training: Training) -> int:
    """Enough steps for a round of about 0.1 s (at least 4: every=4 updates once a round), timed warm."""
    training.steps(2, measuring=False)  # the first steps allocate and warm up: not a step's time
    start = time.perf_counter()
    training.steps(3, measuring=False)
    return max(4, round(0.1 / ((time.perf_counter() - start) / 3)))


@pytest.mark.parametrize("every", ["auto", 1, 4], ids=["auto", "every-step", "every-4th"])
@pytest.mark.parametrize("name,batch_size,window", SETTINGS, ids=[f"{s[0]}-B{s[1]}" for s in SETTINGS])
def test_train_step_with_the_online_noise_scale(benchmark, one_thread, name, batch_size, window, every):
    training = Training(name, batch_size, window, every)
    n = 1 if benchmark.disabled else steps_per_round(training)
    training.steps(2, measuring=True)  # the buffer exists and the first differenced update is done
    benchmark.pedantic(training.steps, args=(n,), kwargs={"measuring": True}, rounds=ROUNDS, warmup_rounds=1)

    # CPU time of this thread, the only one the step runs on: waiting for a core that another
    # process holds counts in wall time, not here.
    seconds: dict[bool, list[float]] = {False: [], True: []}
    training.in_noise_scale = 0.0
    for i in range(1 if benchmark.disabled else RATIO_ROUNDS):
        for measuring in ((False, True) if i % 2 else (True, False)):
            start = time.thread_time()
            training.steps(n, measuring=measuring)
            seconds[measuring].append(time.thread_time() - start)
    # Each round with the noise scale over the round next to it without: a drift of the machine's speed
    # cancels within a pair, and the median drops the pairs a busy spell hit on one side only.
    ratio = statistics.median(a / b for a, b in zip(seconds[True], seconds[False]))
    # The time inside GradientNoiseScale.step itself, over the step without it: no cache effects on the
    # rest of the step, but free of the few-percent noise between rounds of a shared machine.
    share = training.in_noise_scale / (sum(seconds[True]) - training.in_noise_scale)
    benchmark.extra_info.update(noise_scale_step_ratio=ratio, noise_scale_own_share=share, steps_per_round=n,
                                every=every, chosen_every=training.noise_scale.every, batch_size=batch_size,
                                window=window, parameters=sum(p.numel() for p in training.model.parameters()))
    chosen = f" (chose {training.noise_scale.every})" if every == "auto" else ""
    print(f"\n{name}, every={every}{chosen}: a training step with GradientNoiseScale takes {ratio:.3f}x the step without, "
          f"{share:.1%} of it inside GradientNoiseScale.step "
          f"(thread CPU time, median over {len(seconds[True])} pairs of alternating rounds of {n} steps, batch {batch_size}, "
          f"window {window})")
    assert training.noise_scale.updates > 0 and training.noise_scale.biased  # it measured, differenced
