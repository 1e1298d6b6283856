"""The airbench94 config through groupwise on the CPU: one seeded run on the held-out split.

``bash scripts/bench.sh airbench_fit [--seed 0] [--val-size 10000]`` is the groupwise side
of the comparison with the port (``bash scripts/bench.sh airbench``, same options, same
split, same seed): ``groupwise fit --config configs/airbench94.yaml`` exactly as a user runs
it (``groupwise.cli.run`` in this process), float32 on the CPU, with 10,000 of the 50,000
training images held out (``--data.val_size``, ``--data.seed`` = ``--split-seed``) and one
validation after the last epoch, which is the recipe's TTA evaluation. It is timed as the
port times itself (``benchmarks.gpu_recipe``: the whitening init, then the first training
step's start to the end of the fit, which here also holds Lightning's and the callbacks'
work: logging, a checkpoint per epoch, the progress bar), on ``time.perf_counter``. Not
timed, on either side: reading the images, building the net, and here the sanity check's
two validation batches. CPU only (``gpu`` times both on a GPU).

The comparison of the docs runs the two at once, each on its own core with one thread
(``taskset -c 0`` / ``taskset -c 1``, ``OMP_NUM_THREADS=1``), so both see the same machine.
"""

from __future__ import annotations

import argparse

from benchmarks import gpu_recipe
from benchmarks.harness import Record, add_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed_everything of the fit")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the held-out split (data.seed)"
    )
    parser.add_argument("--val-size", type=int, default=10_000, help="training images held out")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="data.batch_size (default: the config's)"
    )
    parser.add_argument(
        "--whitening-images", type=int, default=None,
        help="at most this many images for WhiteningInit (default: the config's 5000)",
    )  # fmt: skip
    parser.add_argument(
        "--root-dir", default="lightning_logs/airbench_fit", help="the fit's default_root_dir"
    )


def run(args: argparse.Namespace, record: Record) -> None:
    fit = gpu_recipe.fit_args(
        args.seed, data_dir=args.data_dir, root=args.root_dir, precision="32-true",
        accelerator="cpu", epochs=args.epochs, val_size=args.val_size,
        split_seed=args.split_seed, compile=False, eager_compile=False,
        batch_size=args.batch_size, whitening_images=args.whitening_images,
    )  # fmt: skip
    result = gpu_recipe.timed_fit(args.seed, fit)
    record.add("groupwise", result)
    record.table(
        "groupwise fit --config configs/airbench94.yaml, CPU, float32",
        ["seed", "TTA accuracy", "timed seconds", "whitening", "first step to end", "steps"],
        [[
            args.seed, f"{100 * result['tta_acc']:.2f}%", f"{result['time_seconds']:.1f}",
            f"{result['whiten_seconds']:.2f}", f"{result['first_step_to_end_seconds']:.1f}",
            result["steps"],
        ]],
    )  # fmt: skip
