"""Template fit vs a plain PyTorch loop doing the same work on CPU: images/s and their ratio.

Both sides train what ``--config`` describes (default ``configs/lenet.yaml``) on the real
CIFAR-10 training images held in memory as uint8 (the DataModule's ``train_set``: 45,000
images, 5,000 held out): the same net (same initial weights), parameter groups,
optimizer, lr schedule (stepped as the config says), loss and label smoothing,
channels_last setting, batch size, per-epoch permutation and keyed crop/flip + normalise
on each batch, for ``--steps`` optimizer steps, no validation. The plain loop's objects are
built from the same parsed config (``groupwise.cli.run(args, run=False)``), so the two
cannot drift apart; the loop itself is hand-written torch with no Lightning.

* template: ``GroupwiseCLI`` exactly as ``groupwise fit`` builds it (progress bar,
  LearningRateMonitor, GroupStats, both checkpoints, TensorBoard, GroupPlan,
  FiniteLossGuard), ``--trainer.max_steps``, ``--trainer.limit_val_batches 0``, CPU, into a
  temporary directory; timed from ``on_train_start`` to ``on_train_end`` by a callback
  appended to the trainer (so the epoch-end checkpoint write is included).
* plain: the hand-written loop; timed from the first batch's index to the last step.
* lean template (an attribution variant): the same as template with the progress bar off
  and the GroupStats callback removed.
* bare Lightning (an attribution variant): the same model, data and trainer with no
  callback and no logger at all (only the timer): what Lightning's loop and the
  LightningModule's own per-step work (hooks, closure, train accuracy) cost beside the
  plain loop. ``template - bare`` is what the default callbacks and TensorBoard cost.
* minimal Lightning (an attribution variant): the plain loop's work as the smallest
  LightningModule (``training_step`` = crop/flip, normalise, net, loss;
  ``configure_optimizers`` = the same optimizer and schedule) with a plain DataLoader, in
  a ``lightning.Trainer`` with everything off (no logger, checkpoint, bar or summary; only
  the timer) and Lightning's default profiler: what Lightning's loop costs by itself, the
  floor of any Lightning template.

The five run back to back in one process, in a rotating order, ``--repeats`` times after
one short warm-up of each. The template's first fit sets glibc's allocator to keep freed
memory (``groupwise.runtime.host_memory``, process-wide), so the plain loop runs with it too: the
ratio is of the loops, not of the allocators. Reports median images/s (steps * batch
size / seconds) of each and the median of the per-repeat ratios plain / variant, and the
median per-step time each variant adds to the plain loop's (a per-step overhead in ms;
with a small ``--batch-size`` the net's work shrinks and the fixed cost per step shows).
``--profile`` instead runs one template fit and one plain loop under cProfile. The
DataModule's decode cache must exist (run ``groupwise fit`` or the ``loader`` benchmark
once).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.fits import quiet_logs, silenced, template_fit, training_tensors
from benchmarks.harness import REPO, Record, Spread, add_data_dir, require_data, run_rounds
from benchmarks.plain_loop import minimal_fit, plain_fit

NAMES = {
    "plain": "plain PyTorch loop",
    "template": "template fit (all default callbacks)",
    "lean": "template fit, no progress bar, no GroupStats",
    "bare": "Lightning alone: no callback, no logger",
    "minimal": "minimal Lightning: 10-line module, bare Trainer",
}
KINDS = ["template", "plain", "lean", "bare", "minimal"]


def variant_fit(
    kind: str,
    args: argparse.Namespace,
    steps: int,
    root: str,
    data: tuple[torch.Tensor, torch.Tensor],
    on_net: Callable[[torch.nn.Module], Any] | None = None,
) -> tuple[float, float]:
    """Seconds of one fit of variant ``kind`` (a key of :data:`NAMES`), and the part of
    them outside the steps (0 for the plain loop)."""
    common = (args.config, args.data_dir, steps, root)
    if kind == "plain":
        return plain_fit(*common, *data, args.batch_size, on_net), 0.0
    with silenced(args.show_logs and kind != "minimal"):
        if kind == "minimal":
            return minimal_fit(*common, *data, args.batch_size, on_net)
        lean, bare = kind == "lean", kind == "bare"
        return template_fit(*common, lean, bare, args.batch_size, on_net=on_net)


def add_common(parser: argparse.ArgumentParser, steps: int, repeats: int | None) -> None:
    """The options parity shares with the benchmarks built on its variants (``repeats``
    None: one fit of each, no rounds and no warm-up)."""
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lenet.yaml")
    add_data_dir(parser)
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per fit")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="rounds of the fits")
        parser.add_argument("--warmup-steps", type=int, default=30, help="steps of the warm-up")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: the config's)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--show-logs", action="store_true", help="let Lightning's output and progress bar through"
    )


def prepare(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """Check the data, apply ``--threads`` and ``--show-logs``; the training tensors."""
    require_data(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.show_logs:
        quiet_logs()
    return training_tensors(args.config, args.data_dir, args.batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, steps=300, repeats=5)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: one template fit and one plain loop under cProfile, where the time goes",
    )


def run(args: argparse.Namespace, record: Record) -> None:
    images, labels, net_name, batch_size = prepare(args)
    data = (images, labels)
    if args.profile:
        from benchmarks.parity_profile import profile

        profile(args, data, record)
        return

    with tempfile.TemporaryDirectory() as root:
        for kind in KINDS:  # warm-up: imports, allocator, first-call costs
            variant_fit(kind, args, args.warmup_steps, root, data)
        rounds = run_rounds(
            KINDS,
            args.repeats,
            lambda kind: variant_fit(kind, args, args.steps, root, data),
            lambda kind, result: f"{kind} {result[0]:.2f} s",
        )
    record.add("rounds", rounds.as_json())
    seconds = {kind: [r[0] for r in rounds.results[kind]] for kind in KINDS}
    outside = {kind: [r[1] for r in rounds.results[kind]] for kind in KINDS}

    def rate(s: float) -> float:
        return args.steps * batch_size / s

    rows = []
    for kind in ("plain", "template", "lean", "bare", "minimal"):
        images_per_s = statistics.median(rate(s) for s in seconds[kind])
        if kind == "plain":
            rows.append([NAMES[kind], f"{images_per_s:,.0f}", "1", "0"])
            continue
        pairs = list(zip(seconds[kind], seconds["plain"], strict=True))
        ratios = Spread.of([p / t for t, p in pairs])
        extra = statistics.median((t - p) / args.steps * 1e3 for t, p in pairs)
        rows.append([NAMES[kind], f"{images_per_s:,.0f}", ratios.format(), f"{extra:.3f}"])
    title = (
        f"{args.config.name} ({net_name}), {args.data_dir.name} ({len(labels):,} training"
        f" images), batch {batch_size}, {args.steps} steps, {args.repeats} rounds, CPU, torch"
        f" threads {torch.get_num_threads()}"
    )
    header = ["", "median img/s", "median ratio vs plain (min-max)", "ms/step over plain"]
    record.table(title, header, rows)
    print(
        "ratio = plain seconds / variant seconds of the same round (throughput ratio);"
        " ms/step over plain = median over rounds of (variant - plain seconds) / steps"
    )
    for kind in ("template", "lean", "bare", "minimal"):
        print(
            f"{kind}: median {statistics.median(outside[kind]):.3f} s of "
            f"{statistics.median(seconds[kind]):.3f} s outside the steps (before the first "
            "batch starts, after the last ends: epoch-end checkpoint, logger)"
        )
