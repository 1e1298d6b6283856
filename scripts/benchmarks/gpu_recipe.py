"""The groupwise side of ``scripts/bench_gpu.py``: ``groupwise fit --config
configs/airbench94.yaml`` timed the way airbench times itself.

One fit is the ``fit`` subcommand exactly as a user runs it (``groupwise.cli.run``), with
the benchmark's options on the command line and two timing callbacks around the config's
own ``WhiteningInit`` (``--trainer.callbacks`` is the shipped list with
:class:`RecipeTimer` put before it and :class:`WhiteningDone` after it):

- timed, as airbench94_muon.py times itself (L379-L430: the whitening init, each epoch's
  training, the final TTA evaluation): the whitening init (``on_fit_start`` of
  ``WhiteningInit``), then everything from the first training step's start to the end of
  the fit (``on_fit_end`` of the timer, which runs after every callback the config lists
  and before the ones groupwise adds itself, of which only ``RunSummary`` does work there:
  a few lines to a file): every step, Lightning's and the callbacks' per-step and
  per-epoch work (logging, checkpoints at each epoch end), and the one validation at the
  end (``check_val_every_n_epoch`` = the epochs), which is the recipe's TTA evaluation
  (``model.tta: mirror_translate``);
- not timed: building the CLI, reading the images (the DataModule's ``setup``),
  ``configure_model``, the move to the device, the sanity check's two validation batches
  (Lightning runs them between the whitening and the first step; airbench has none) and
  the warm-up fit (the first, which compiles).

On a GPU the points are CUDA events on the current stream, read once at the end of the
fit (one ``torch.cuda.synchronize``; nothing syncs inside the fit for the timer's sake); on
a CPU ``time.perf_counter``. Lightning has no timer of regions across hooks on the
device's clock (its ``Timer`` callback reads the host clock per stage); written here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from benchmarks.harness import REPO

CONFIG = REPO / "configs" / "airbench94.yaml"


class Clock:
    """Time points on the device's clock: CUDA events (recorded in stream order, read after
    one synchronize) where ``cuda``, ``time.perf_counter`` otherwise."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        """Seconds from ``start`` to ``end`` (both from :meth:`mark`, ``end`` recorded)."""
        if not self.cuda:
            return end - start
        end.synchronize()
        return 1e-3 * start.elapsed_time(end)


class RecipeTimer(Callback):
    """Marks the timed regions of one fit (see the module docstring); :attr:`result` holds
    the seconds once the fit has ended. Put it before ``WhiteningInit`` in the callbacks."""

    def __init__(self) -> None:
        self.clock = Clock(cuda=False)
        self.points: dict[str, Any] = {}
        self.epochs: list[tuple[Any, Any]] = []
        self.validations: list[tuple[Any, Any]] = []
        self.result: dict[str, Any] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.clock = Clock(cuda=trainer.strategy.root_device.type == "cuda")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.points["fit_start"] = self.clock.mark()

    def whitening_done(self) -> None:
        self.points["whitened"] = self.clock.mark()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if "first_step" not in self.points:
            self.points["first_step"] = self.clock.mark()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs.append((self.clock.mark(), None))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs[-1] = (self.epochs[-1][0], self.clock.mark())

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validations.append((self.clock.mark(), None))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validations[-1] = (self.validations[-1][0], self.clock.mark())

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        points, seconds = self.points, self.clock.seconds
        points["fit_end"] = self.clock.mark()
        whiten = seconds(points["fit_start"], points.get("whitened", points["fit_start"]))
        training = seconds(points["first_step"], points["fit_end"])
        self.result = {
            "time_seconds": whiten + training,
            "whiten_seconds": whiten,
            "first_step_to_end_seconds": training,
            # an epoch: from its start to its end hooks (the last one holds the validation)
            "epoch_seconds": [seconds(a, b) for a, b in self.epochs if b is not None],
            "validation_seconds": [seconds(a, b) for a, b in self.validations if b is not None],
        }


class WhiteningDone(Callback):
    """Ends the timer's whitening region; put it right after ``WhiteningInit``."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, RecipeTimer):
                callback.whitening_done()


class EagerCompile(Callback):
    """``net.compile(backend="eager")`` at ``setup``, for the CPU dry run: Dynamo traces the
    recipe's net as ``model.compile: true`` would have it traced, nothing is generated
    (Inductor would need minutes and a C++ compiler here). Use with ``model.compile:
    false``; the model's own ``compile`` has no backend option."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pl_module.net.compile(backend="eager")


def timed_callbacks(
    config: Path = CONFIG, whitening_images: int | None = None, eager_compile: bool = False
) -> list[dict[str, Any]]:
    """The config's ``trainer.callbacks`` with the timer before them and
    :class:`WhiteningDone` after them (``WhiteningInit``'s ``images`` capped at
    ``whitening_images`` where given: the dry run has 8 training images)."""
    shipped = yaml.safe_load(Path(config).read_text())["trainer"].get("callbacks") or []
    for callback in shipped:
        if callback["class_path"].endswith("WhiteningInit") and whitening_images is not None:
            init_args = callback.setdefault("init_args", {})
            init_args["images"] = min(init_args.get("images", 5000), whitening_images)
    here = "benchmarks.gpu_recipe"
    extra = [{"class_path": f"{here}.EagerCompile"}] if eager_compile else []
    return [
        {"class_path": f"{here}.RecipeTimer"},
        *shipped,
        {"class_path": f"{here}.WhiteningDone"},
        *extra,
    ]


def fit_args(
    seed: int,
    *,
    data_dir: str | Path,
    root: str | Path,
    precision: str,
    accelerator: str,
    epochs: int,
    val_size: int,
    split_seed: int,
    compile: bool,
    config: Path = CONFIG,
    batch_size: int | None = None,
    widths: list[int] | None = None,
    whitening_images: int | None = None,
    eager_compile: bool | None = None,
) -> list[str]:
    """The ``groupwise`` arguments of one timed fit: the shipped config, the held-out
    split the port evaluates on (``val_size``, ``data.seed`` = ``split_seed``),
    ``precision``, ``channels_last``, ``compile`` (False: :class:`EagerCompile` instead,
    unless ``eager_compile`` is False: the CPU comparison runs the net uncompiled, as the
    port there), validation once, after the last epoch. ``batch_size``, ``widths`` and
    ``whitening_images``: the dry run's smaller sizes."""
    if eager_compile is None:
        eager_compile = not compile
    callbacks = timed_callbacks(config, whitening_images, eager_compile=eager_compile)
    return [
        "fit", "--config", str(config), f"--seed_everything={seed}",
        f"--data.data_dir={data_dir}", f"--data.val_size={val_size}",
        f"--data.seed={split_seed}",
        f"--trainer.accelerator={accelerator}", "--trainer.devices=1",
        f"--trainer.precision={precision}", f"--trainer.max_epochs={epochs}",
        f"--trainer.check_val_every_n_epoch={epochs}",
        f"--trainer.default_root_dir={root}",
        "--model.channels_last=true", f"--model.compile={str(compile).lower()}",
        f"--trainer.callbacks={json.dumps(callbacks)}",
        *([f"--data.batch_size={batch_size}"] if batch_size else []),
        *([f"--model.net.init_args.widths={json.dumps(widths)}"] if widths else []),
    ]  # fmt: skip


def dynamo_graphs() -> int | None:
    """How many graphs Dynamo has compiled in this process (its debug counter, read only;
    None where this torch has no such counter)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return None
    return int(counters["stats"]["unique_graphs"])


def timed_fit(seed: int, args: list[str]) -> dict[str, Any]:
    """Run one fit (``args`` from :func:`fit_args`) and return what the record holds: the
    timer's seconds, the final (TTA) validation accuracy, the steps, the precision Lightning
    ran in, on how many images each ``WhiteningInit`` computed its filters, and how many
    graphs Dynamo compiled during the fit (0 when it reused the warm-up fit's)."""
    from groupwise.cli import run

    graphs = dynamo_graphs()
    start = time.perf_counter()
    cli = run(args)
    wall = time.perf_counter() - start
    trainer = cli.trainer
    (timer,) = [c for c in trainer.callbacks if type(c).__name__ == "RecipeTimer"]
    if timer.result is None:
        raise RuntimeError("the timed fit ended without reaching on_fit_end")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    whitening = [c for c in trainer.callbacks if type(c).__name__ == "WhiteningInit"]
    after = dynamo_graphs()
    return {
        "seed": seed,
        "tta_acc": metrics.get("val/acc"),
        **timer.result,
        "wall_seconds": wall,
        "steps": trainer.global_step,
        "precision": str(trainer.precision),
        "whitened_images": [c.images for c in whitening if c.computed],
        "graphs_compiled": None if graphs is None or after is None else after - graphs,
        "metrics": metrics,
        "log_dir": trainer.log_dir,
    }
