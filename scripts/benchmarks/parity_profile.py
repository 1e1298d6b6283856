"""``bench.py parity --profile``: where a template fit and the plain loop spend their time
per step (cProfile, cumulative), side by side. cProfile inflates Python calls several
times: compare the two sides, not absolute figures."""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
from pathlib import Path

import torch

from benchmarks.fits import silenced, template_fit
from benchmarks.harness import Record
from benchmarks.plain_loop import plain_fit

#: the per-step work besides the net: Lightning's loop, logging, metrics, callbacks, data
PICKED = {
    "training_step", "_loss", "backward", "step", "log", "update", "forward",
    "_call_callback_hooks", "on_train_batch_end", "on_before_optimizer_step",
    "on_after_batch_transfer", "keyed_crop_flip", "normalize", "__next__",
    "_call_lightning_module_hook", "advance", "zero_grad", "on_train_batch_start",
}  # fmt: skip


def profile(
    args: argparse.Namespace, data: tuple[torch.Tensor, torch.Tensor], record: Record
) -> None:
    """Print (and record) the ms per step of the functions where the time goes."""
    stats = {}
    with tempfile.TemporaryDirectory() as root, silenced(args.show_logs):
        common = (args.config, args.data_dir)
        template_fit(*common, args.warmup_steps, root, batch_size=args.batch_size)  # warm
        for kind in ("template", "plain"):
            profiler = cProfile.Profile()
            profiler.enable()
            if kind == "template":
                template_fit(*common, args.steps, root, batch_size=args.batch_size)
            else:
                plain_fit(*common, args.steps, root, *data, args.batch_size)
            profiler.disable()
            stats[kind] = pstats.Stats(profiler)
    for kind, stat in stats.items():
        rows = sorted(stat.stats.items(), key=lambda item: -item[1][3])
        shown = [row for row in rows[:12] if row[0][2] not in PICKED]
        shown += [row for row in rows if row[0][2] in PICKED][:40]
        table = [
            [f"{Path(path).name}:{line}({name})", f"{cumulative / args.steps * 1e3:.3f}", calls]
            for (path, line, name), (_, calls, _, cumulative, _) in shown
            if cumulative / args.steps >= 2e-5
        ]
        title = f"{kind}: ms per step ({args.steps} steps) of the functions where time goes"
        record.table(title, ["function", "ms/step", "calls"], table)
