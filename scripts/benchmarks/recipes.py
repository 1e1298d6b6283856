"""Training throughput of several recipes, back to back, and each one's predicted schedule time.

Each recipe trains ``--steps`` optimizer steps through the template's CLI exactly as
``groupwise fit`` builds it (``fits.template_fit``: every default callback, no
validation), each at its own batch size, net, groups and optimizers, after one short
warm-up of each; the order rotates every repeat (a ratio that holds up on a loaded machine
better than two whole fits run one after the other). Reported per recipe: median images/s
and seconds per step, and the predicted training time of its whole schedule
(``max_epochs`` x steps per epoch x seconds per step, without validation and start-up);
then each recipe's predicted time over the first one's, the median of the per-repeat
ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import tempfile
from pathlib import Path

from benchmarks.fits import template_fit
from benchmarks.harness import REPO, Record, Spread, add_data_dir, require_data, run_rounds
from groupwise.cli import run as cli_run

TRAIN_IMAGES = 45_000  # the DataModule's training split with val_size 5000


def schedule(config: Path, data_dir: Path) -> tuple[int, int]:
    """(max_epochs, batch_size) of a config."""
    cli = cli_run(["--config", str(config), f"--data.data_dir={data_dir}"], run=False)
    return cli.trainer.max_epochs, cli.datamodule.batch_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        default=[REPO / "configs" / "fast.yaml", REPO / "configs" / "fast_muon.yaml"],
    )
    add_data_dir(parser)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3)


def run(args: argparse.Namespace, record: Record) -> None:
    require_data(args.data_dir)
    plans = {str(c): schedule(c, args.data_dir) for c in args.configs}
    names = [str(c) for c in args.configs]
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stderr(io.StringIO()):
        for config in args.configs:
            template_fit(config, args.data_dir, args.warmup_steps, root)
        rounds = run_rounds(
            names,
            args.repeats,
            lambda c: template_fit(Path(c), args.data_dir, args.steps, root)[0] / args.steps,
            lambda c, seconds: f"{Path(c).name} {seconds:.3f} s/step",
        )
    record.add("rounds", rounds.as_json())

    def predicted(config: str, seconds: float) -> float:
        epochs, batch = plans[config]
        return epochs * math.ceil(TRAIN_IMAGES / batch) * seconds

    first = names[0]
    rows = []
    for config in names:
        epochs, batch = plans[config]
        per_step = rounds.results[config]
        step = statistics.median(per_step)
        ratios = Spread.of(
            [predicted(config, a) / predicted(first, b)
             for a, b in zip(per_step, rounds.results[first], strict=True)]
        )  # fmt: skip
        rows.append([
            Path(config).name, epochs, batch, f"{step:.3f}", f"{batch / step:.0f}",
            f"{predicted(config, step):.0f}", ratios.format(),
        ])  # fmt: skip
    title = f"{args.steps} steps x {args.repeats} repeats; ratio: predicted train s / the first's"
    header = ["config", "epochs", "batch", "s/step", "images/s", "train s", "ratio (min-max)"]
    record.table(title, header, rows)
