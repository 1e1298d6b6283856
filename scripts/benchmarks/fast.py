"""Time to accuracy of a recipe (default configs/fast.yaml) over several seeds.

Each seed is one ``groupwise fit --config CONFIG --seed_everything SEED`` in a fresh process,
exactly as a user runs it (all default callbacks, TensorBoard, checkpoints), into a
temporary directory. Extra arguments after ``--`` go to every fit, e.g. on a GPU
``-- --trainer.precision bf16-mixed --model.compile true``.

Reported per seed and as median / mean:

* wall: the whole ``fit`` process, interpreter start to exit (the CPU target's measure);
* start: process start to the first training batch (imports, data load from the decode
  cache, model build, compile set-up);
* train: first training batch to the end of the final validation (the fastest published
  trainers' measure; with ``--model.compile true`` it includes the compile warm-up, which
  is also reported on its own as the first step's extra time);
* val acc: the final epoch's ``val/acc`` (with the recipe's flip test-time augmentation);
* peak RSS of the fit process and, on a GPU, peak GPU memory allocated.

The decode cache is built first (not timed) when it is missing.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from benchmarks.fits import callback_arg, child_fit, decode_cache
from benchmarks.harness import REPO, Record, add_data_dir, require_data


class FitTimer(Callback):
    """Writes the fit's timings, final val/acc and peak memory to ``out`` (JSON) at the end.

    Added to the child fit by class path (``benchmarks.fast.FitTimer``).
    """

    def __init__(self, out: str, process_start: float) -> None:
        self.out, self.process_start = out, process_start
        self.first_batch = self.second_batch = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps += 1
        if self.steps == 1:
            self.first_batch = time.time()
        elif self.steps == 2:
            self.second_batch = time.time()

    def on_train_end(self, trainer, pl_module) -> None:
        end = time.time()
        cuda = torch.cuda.is_available() and pl_module.device.type == "cuda"
        result = {
            "start_s": self.first_batch - self.process_start,
            "train_s": end - self.first_batch,
            "first_step_s": self.second_batch - self.first_batch,
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "val_acc": float(trainer.callback_metrics["val/acc"]),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
        }
        Path(self.out).write_text(json.dumps(result))


def fit_once(config: Path, data_dir: Path, seed: int, extra: list[str], root: str) -> dict:
    """One seed's fit in a fresh process: its wall time and what :class:`FitTimer` wrote."""
    out = Path(root) / f"seed{seed}.json"
    start = time.time()
    arguments = [
        "fit",
        "--config", str(config),
        f"--seed_everything={seed}",
        f"--data.data_dir={data_dir}",
        f"--trainer.default_root_dir={root}/seed{seed}",
        "--trainer.enable_progress_bar=false",
        callback_arg("benchmarks.fast.FitTimer", out=str(out), process_start=start),
        *extra,
    ]  # fmt: skip
    child_fit(arguments, what=f"seed {seed}")
    wall = time.time() - start
    return {"seed": seed, "wall_s": wall, **json.loads(out.read_text())}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fast.yaml")
    add_data_dir(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("extra", nargs="*", help="after --: arguments for every fit")


COLUMNS = [
    ("seed", "seed", "{}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("start s", "start_s", "{:.1f}"),
    ("train s", "train_s", "{:.1f}"),
    ("1st step s", "first_step_s", "{:.2f}"),
    ("val acc", "val_acc", "{:.4f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ("peak GPU MiB", "peak_gpu_mib", "{:.0f}"),
]


def run(args: argparse.Namespace, record: Record) -> None:
    require_data(args.data_dir)
    decode_cache(args.data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            rows.append(fit_once(args.config, args.data_dir, seed, args.extra, root))
            row = rows[-1]
            print(
                f"seed {seed}: wall {row['wall_s']:.1f} s, train {row['train_s']:.1f} s,"
                f" val acc {row['val_acc']:.4f}",
                flush=True,
            )
    record.add("seeds", rows)

    def cell(value, fmt: str) -> str:
        return "-" if value is None else fmt.format(value)

    table = [[cell(row[key], fmt) for _, key, fmt in COLUMNS] for row in rows]
    for name, summary in (("median", statistics.median), ("mean", statistics.mean)):
        table.append(
            [name]
            + [
                cell(None if rows[0][key] is None else summary(r[key] for r in rows), fmt)
                for _, key, fmt in COLUMNS[1:]
            ]
        )
    title = (
        f"{args.config.name} {' '.join(args.extra)} on {rows[0]['device']}, "
        f"{rows[0]['epochs']} epochs, {rows[0]['steps']} steps"
    )
    record.table(title, [name for name, _, _ in COLUMNS], table)
    accs = [r["val_acc"] for r in rows]
    print(
        f"val acc min {min(accs):.4f}, max {max(accs):.4f};"
        f" wall max {max(r['wall_s'] for r in rows):.1f} s"
    )
