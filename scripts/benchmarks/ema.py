"""Does a weight EMA help a recipe? Validation accuracy of the final weights and of their EMAs.

Each seed is one ``groupwise fit --config CONFIG --seed_everything SEED`` in a fresh process
with ``groupwise.callbacks.EMAWeightAveraging`` at the largest decay, as a user adds it. An
EMA changes no training step (it is swapped in for validation only), so every decay is
compared on the same training run: ``EMATracks`` keeps one ``AveragedModel`` per decay,
updated as the callback updates its own (after every optimizer step, parameters and
buffers, ``torch.optim.swa_utils.get_ema_avg_fn``); its average for the callback's decay
is checked to equal the callback's checkpoint exactly. The final training weights and each
average are then validated with ``groupwise validate`` (the recipe's test-time
augmentation included), and a table gives val acc per seed and decay. Extra arguments
after ``--`` go to every fit and validation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

from benchmarks.fits import callback_arg, child_fit
from benchmarks.harness import REPO, Record, add_data_dir, require_data


class EMATracks(Callback):
    """One EMA of the weights per decay, written to ``out`` (``{decay: state_dict}``) when
    training ends. Added to the child fit by class path (``benchmarks.ema.EMATracks``)."""

    def __init__(self, out: str, decays: list[float]) -> None:
        self.out, self.decays = out, decays
        self.averages: dict[float, AveragedModel] = {}
        self.updated_at = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.averages = {
            decay: AveragedModel(pl_module.net, avg_fn=get_ema_avg_fn(decay), use_buffers=True)
            for decay in self.decays
        }

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step > self.updated_at:  # after each optimizer step, as the callback
            for average in self.averages.values():
                average.update_parameters(pl_module.net)
            self.updated_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        states = {
            decay: {f"net.{k}": v for k, v in average.module.state_dict().items()}
            for decay, average in self.averages.items()
        }
        torch.save(states, self.out)


def validate(args: argparse.Namespace, seed: int, checkpoint: Path, root: str) -> float:
    """``groupwise validate`` of one checkpoint, with the fits' extra arguments."""
    from groupwise.cli import run

    cli = run(
        [
            "validate",
            f"--config={args.config}",
            f"--seed_everything={seed}",
            f"--data.data_dir={args.data_dir}",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=false",
            f"--ckpt_path={checkpoint}",
            *args.extra,
        ]
    )
    return float(cli.trainer.callback_metrics["val/acc"])


def one_seed(args: argparse.Namespace, seed: int, root: str) -> dict[str, float]:
    """Val acc of the final weights and of each EMA, for one seed's fit."""
    tracks = Path(root) / f"tracks{seed}.pt"
    arguments = [
        "fit",
        f"--config={args.config}",
        f"--seed_everything={seed}",
        f"--data.data_dir={args.data_dir}",
        f"--trainer.default_root_dir={root}/seed{seed}",
        "--trainer.enable_progress_bar=false",
        callback_arg("groupwise.callbacks.EMAWeightAveraging", decay=max(args.decays)),
        callback_arg("benchmarks.ema.EMATracks", out=str(tracks), decays=args.decays),
        *args.extra,
    ]
    child_fit(arguments, what=f"seed {seed}")

    (last,) = Path(root, f"seed{seed}").glob("lightning_logs/version_*/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    states = torch.load(tracks, weights_only=True)
    callback_average = checkpoint["state_dict"]
    mine = states[max(args.decays)]
    if not all(torch.equal(mine[k], callback_average[k]) for k in mine):
        sys.exit(f"seed {seed}: EMATracks' average differs from the callback's")

    accuracies = {}
    for name, state in [("final", checkpoint["current_model_state"]), *states.items()]:
        path = Path(root) / f"seed{seed}-{name}.ckpt"
        plain = {k: v for k, v in checkpoint.items() if k not in ("current_model_state",)}
        torch.save({**plain, "state_dict": state}, path)
        accuracies[str(name)] = validate(args, seed, path, root)
    return accuracies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "fast.yaml")
    add_data_dir(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decays", type=float, nargs="+", default=[0.99, 0.995, 0.998, 0.999])
    parser.add_argument("extra", nargs="*", help="after --: arguments for every fit")


def run(args: argparse.Namespace, record: Record) -> None:
    require_data(args.data_dir)
    rows = {}
    with tempfile.TemporaryDirectory() as root:
        for seed in args.seeds:
            rows[seed] = one_seed(args, seed, root)
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[seed].items()))
    record.add("val_acc", rows)

    names = list(rows[args.seeds[0]])
    table = [[seed, *(f"{row[n]:.4f}" for n in names)] for seed, row in rows.items()]
    means = [statistics.mean(row[n] for row in rows.values()) for n in names]
    table.append(["mean", *(f"{m:.4f}" for m in means)])
    gains = [statistics.mean(row[n] - row["final"] for row in rows.values()) for n in names]
    table.append(["vs final", *(f"{g:+.4f}" for g in gains)])
    title = (
        f"{args.config.name} {' '.join(args.extra)}: val acc of the final weights and of\n"
        "their EMA at each decay (per optimizer step)"
    )
    record.table(title, ["seed", *names], table)
