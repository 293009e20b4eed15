"""The batch-size harness: ``python -m bench`` (see docs/bench.md).

Modules: cli (options), harness (one run), hardware (machine and limits),
trial (one batch size in a child process), search (sweep, boundary,
recommendation), models (reference training steps), report (table, files, plots).
"""
