"""Page faults and time per CPU training step: freed host memory kept vs glibc's adaptive default.

Kept is ``groupwise.runtime.host_memory``'s setting, the default of every run; adaptive is glibc's
own thresholds.

Each fit is ``groupwise fit --config configs/NAME.yaml`` in a fresh process, exactly as a
user runs it (all default callbacks, TensorBoard), for ``--steps`` optimizer steps with no
validation, on the CPU. "adaptive" runs with ``MALLOC_ARENA_MAX=8`` in the environment,
which makes groupwise leave glibc's allocator alone and changes nothing else for a
single-threaded allocation pattern. A callback records the process's minor page faults and
the clock at the start of every step; the second half of the steps is reported (the heap
has grown to its size by then): mean faults per step and mean ms per step, per fit,
then the median over ``--rounds`` rounds (kept and adaptive back to back, alternating
which goes first) and the median of the per-round time ratios adaptive / kept.
ResNet-18 steps take over a second here: give it fewer ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

from benchmarks.fits import callback_arg, child_fit, decode_cache
from benchmarks.harness import (
    REPO,
    Record,
    Spread,
    add_data_dir,
    paired_ratios,
    require_data,
    run_rounds,
)


class StepProbe(Callback):
    """Writes ``[[minor faults, seconds], ...]`` at each step's start to ``out`` (JSON).
    Added to the child fit by class path (``benchmarks.host_memory.StepProbe``)."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()))

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps(self.rows))


def fit_once(config: Path, data_dir: Path, steps: int, adaptive: bool) -> dict[str, float]:
    """Faults per step and ms per step over the second half of the steps: means, since the
    faults come in bursts on some steps."""
    with tempfile.TemporaryDirectory() as root:
        out = Path(root) / "steps.json"
        arguments = [
            "fit",
            "--config", str(config),
            f"--data.data_dir={data_dir}",
            f"--trainer.default_root_dir={root}",
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            callback_arg("benchmarks.host_memory.StepProbe", out=str(out)),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        if adaptive:
            env["MALLOC_ARENA_MAX"] = "8"
        child_fit(arguments, env=env, what=config.name)
        rows = json.loads(out.read_text())[steps // 2 :]
    faults = [b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)]
    seconds = [b[1] - a[1] for a, b in zip(rows, rows[1:], strict=False)]
    return {"faults": statistics.mean(faults), "ms": statistics.mean(seconds) * 1e3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", nargs="+", default=["lenet", "fast"])
    add_data_dir(parser)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per fit")
    parser.add_argument("--rounds", type=int, default=3)


def run(args: argparse.Namespace, record: Record) -> None:
    require_data(args.data_dir)
    decode_cache(args.data_dir)
    rows = []
    for name in args.configs:
        config = REPO / "configs" / f"{name}.yaml"
        print(f"{name}:", flush=True)
        rounds = run_rounds(
            ["kept", "adaptive"],
            args.rounds,
            lambda variant, config=config: fit_once(
                config, args.data_dir, args.steps, variant == "adaptive"
            ),
            lambda variant, r: f"{variant} {r['faults']:,.0f} faults, {r['ms']:.2f} ms",
        )
        record.add(name, rounds.as_json())
        kept, adaptive = rounds.results["kept"], rounds.results["adaptive"]
        ratio = Spread.of(paired_ratios([r["ms"] for r in adaptive], [r["ms"] for r in kept]))
        rows.append([
            name,
            f"{statistics.median(r['faults'] for r in kept):,.0f}",
            f"{statistics.median(r['ms'] for r in kept):.2f}",
            f"{statistics.median(r['faults'] for r in adaptive):,.0f}",
            f"{statistics.median(r['ms'] for r in adaptive):.2f}",
            ratio.format(),
        ])  # fmt: skip
    record.table(
        f"medians over {args.rounds} rounds of the per-fit means (second half of each fit's "
        f"{args.steps} steps)",
        ["config", "kept faults", "ms/step", "adaptive faults", "ms/step",
         "adaptive / kept (min-max)"],
        rows,
    )  # fmt: skip
