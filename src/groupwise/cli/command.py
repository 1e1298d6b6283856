"""The ``groupwise`` command: Lightning's CLI with this template's defaults.

Lightning's ``LightningCLI`` does the parsing, YAML configs, dotted overrides and the
``fit`` / ``validate`` / ``test`` / ``predict`` subcommands; ``lr_find`` (the learning-rate
range test, ``GroupwiseTrainer.lr_find``) is added beside them. What it lacks and is added here:
the CLI's automatic ``configure_optimizers`` is turned off (it would make one anonymous
parameter group), and two callbacks are always present, each configurable from YAML under
its own key: ``checkpoint`` (the best epoch by ``val/acc``), ``last_checkpoint``
(``last.ckpt``, rewritten every epoch; with ``data.val_size 0`` there is no validation
and no best checkpoint, see ``no_validation``), ``lr_monitor`` (every named group's lr, momentum
and weight decay at the scheduler's own interval), ``group_stats`` (each group's gradient
norm, parameter norm and update ratio every N steps) and ``confusion_matrix`` (an image
at each validation end).

Why a second ``ModelCheckpoint`` for ``last.ckpt``: since Lightning 2.6 ``save_last=True``
writes ``last.ckpt`` only when a top-k checkpoint is saved in the same step, so with a
monitored metric ``last.ckpt`` silently stays at the best epoch instead of the last one.

The config decides the model: LightningCLI's own handling of ``--ckpt_path FILE`` replaces
the config's ``model`` section by the hyperparameters saved in the checkpoint, so changed
groups, optimizer or net would be silently ignored; here the file is only checked to be a
readable checkpoint, and the net and group-layout checks of ``Classifier`` then apply.

A ``preemption`` callback (``Preemption``) turns SIGTERM and SIGUSR1 into "finish the
step, save ``last.ckpt``, exit with status 75"; the training loader is resumable, so
``--ckpt_path last`` continues at the next batch.

A ``finite_loss`` callback (``FiniteLossGuard``) is always present too, and Lightning's
default progress bar is replaced by ``ProgressBar`` (redrawn at most every 0.5 s, not after
every step; a progress bar given in ``trainer.callbacks`` is kept as it is). Every trainer also
gets ``AtomicCheckpointIO`` (unless another checkpoint plugin is set), ``NoProfiler``
(unless ``trainer.profiler`` is set: Lightning's default without its per-call context
manager, see ``groupwise.runtime.profiler``), on the CPU glibc's allocator set to keep freed
memory for the next step (``groupwise.runtime.host_memory``), ``GroupPlan`` (the group
table in the run directory and TensorBoard), ``CustomScalars`` (TensorBoard's Custom Scalars
tab: each quantity's groups in one chart) and ``RunSummary`` (where the run
went, printed and in ``summary.txt``, at the end of fit, validate and test) and
``RNGStateCheckpoint`` (every rank's random states in each checkpoint, restored on resume); and
``--ckpt_path last`` means the newest ``last.ckpt`` of an earlier run of this config in the
directory where this run's checkpoints go (see ``groupwise.checkpoint.last``; Lightning's
own ``"last"`` looks only in the new run's version directory, so a resume in a new process
would silently start afresh).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks import ProgressBar as ProgressBarBase
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.utilities import rank_zero_info

from groupwise.callbacks.confusion_matrix import ConfusionMatrix
from groupwise.callbacks.custom_scalars import CustomScalars
from groupwise.callbacks.finite_loss import FiniteLossGuard
from groupwise.callbacks.group_plan import GroupPlan
from groupwise.callbacks.group_stats import GroupStats
from groupwise.callbacks.lr_monitor import LearningRateMonitor
from groupwise.callbacks.prediction_writer import PredictionWriter
from groupwise.callbacks.preemption import Preemption
from groupwise.callbacks.progress_bar import ProgressBar
from groupwise.callbacks.rng_state import RNGStateCheckpoint
from groupwise.callbacks.run_summary import RunSummary
from groupwise.checkpoint.io import AtomicCheckpointIO, CheckpointError, load_checkpoint_file
from groupwise.checkpoint.last import (
    RecordConfigFiles,
    RunConfig,
    pick_last,
    settings_changed_message,
)
from groupwise.checkpoint.untrusted import RestoredPathGuard
from groupwise.classifier import Classifier
from groupwise.cli.parser import GroupwiseArgumentParser, config_paths
from groupwise.cli.preflight import check_before_fit
from groupwise.cli.run_folders import FirstBatch, RunFolders
from groupwise.data.cifar10 import CIFAR10DataModule, global_seed
from groupwise.errors import ConfigError, exit_on_user_error
from groupwise.runtime.console import device_line, quiet_console
from groupwise.runtime.host_memory import keep_freed_host_memory
from groupwise.runtime.profiler import NoProfiler
from groupwise.trainer import GroupwiseTrainer


class GroupwiseCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # lr_find is GroupwiseTrainer.lr_find; its arguments become the subcommand's options
        return {**LightningCLI.subcommands(), "lr_find": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": False,  # last.ckpt comes from last_checkpoint
                "checkpoint.filename": "epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.monitor": None,  # no metric: save after every epoch
                "last_checkpoint.save_top_k": 1,  # keep only the newest
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,  # overwrite, no last-v1
            }
        )
        # a forced callback, so Lightning orders it before the ModelCheckpoints: its checks at
        # epoch end and before validation run before they save
        parser.add_lightning_class_args(FiniteLossGuard, "finite_loss")
        # on SIGTERM / SIGUSR1: finish the step, save last.ckpt, exit 75 (resumable)
        parser.add_lightning_class_args(Preemption, "preemption")
        parser.add_lightning_class_args(GroupStats, "group_stats")
        parser.add_lightning_class_args(ConfusionMatrix, "confusion_matrix")
        # predict: the predictions into <run directory>/predictions.csv
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults(
            {
                # None: Lightning logs each scheduler's lrs at its own interval (every
                # log_every_n_steps with a per-step schedule); "epoch"/"step" force one
                "lr_monitor.logging_interval": None,
                "lr_monitor.log_momentum": True,
                "lr_monitor.log_weight_decay": True,
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # jsonargparse reports invalid YAML without the file's name ("<unicode string>"):
        # read each --config file first, so the error names the one that is broken.
        argv = sys.argv[1:] if args is None else args
        for path in config_paths(argv if isinstance(argv, list) else []):
            try:
                with open(path) as file:  # a file object: YAML's marks name the file
                    yaml.safe_load(file)
            except (OSError, yaml.YAMLError) as error:
                parser.error(f"cannot read config file {path}: {error}")
        super().parse_arguments(parser, args)

    def _parse_ckpt_path(self) -> None:
        # Overrides a private LightningCLI method, on purpose (no public hook runs before it
        # reads the file): Lightning's replaces the config's model by the checkpoint's saved
        # hyperparameters. tests/test_lightning_private_api.py fails if Lightning stops
        # calling it.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            load_checkpoint_file(ckpt_path)  # a clear error for a missing or broken file

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # read before the trainer is built: LightningCLI extends the configured list in place
        # with the forced callbacks, and the Trainer with its default progress bar
        user_callbacks = self.configured_callbacks()
        user_bar = any(isinstance(c, ProgressBarBase) for c in user_callbacks)
        if self.subcommand == "fit":  # before the trainer: nothing is written yet
            check_before_fit(self.model, user_callbacks)
        trainer = super().instantiate_trainer(**kwargs)
        if self.configured("trainer.sync_batchnorm") and trainer.world_size > 1:
            check_sync_batchnorm(trainer)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if type(trainer.profiler) is PassThroughProfiler:  # Lightning's default: none set
            trainer.profiler = NoProfiler()
        if isinstance(trainer.accelerator, CPUAccelerator):
            keep_freed_host_memory()  # process-wide: see groupwise.runtime.host_memory
        trainer.callbacks += [GroupPlan(), CustomScalars(), RunSummary(), RNGStateCheckpoint()]
        trainer.callbacks.append(RestoredPathGuard())  # paths restored from a checkpoint
        trainer.callbacks.append(FirstBatch())  # a failed start leaves nothing (RunFolders)
        bar = trainer.progress_bar_callback
        if type(bar) is TQDMProgressBar and not user_bar:  # Lightning's default bar
            trainer.callbacks[trainer.callbacks.index(bar)] = ProgressBar()
        rank_zero_info(device_line(trainer))  # for Lightning's GPU and TPU lines
        return trainer

    def configured(self, key: str) -> Any:
        """The instantiated config's value at ``key`` (e.g. ``trainer.callbacks``), under the
        subcommand's namespace when there is one."""
        return self.config_init.get(f"{self.subcommand}.{key}" if self.subcommand else key)

    def configured_callbacks(self) -> list[Any]:
        """The instantiated callbacks of the config's ``trainer.callbacks``."""
        callbacks = self.configured("trainer.callbacks") or []
        return list(callbacks) if isinstance(callbacks, list) else [callbacks]

    def resolve_last_checkpoint(self) -> None:
        """``--ckpt_path last``: the newest ``last.ckpt`` of an earlier run of this config.
        LightningCLI calls ``before_<subcommand>`` just before it reads the subcommand's
        arguments (``ckpt_path`` among them) from ``config_init``."""
        config = self.config_init[self.subcommand]
        if config.get("ckpt_path") == "last":
            current = RunConfig(self.model.hparams, self.datamodule.hparams, global_seed())
            config["ckpt_path"] = newest_last_checkpoint(
                self.trainer,
                config["last_checkpoint"],
                current,
                type(self.datamodule),
                self.subcommand,
                self.config_files(),
            )

    def config_files(self) -> list[str]:
        """The absolute paths of the ``--config`` files, in order."""
        files = self.config[self.subcommand].get("config") or []
        return [str(getattr(file, "absolute", file)) for file in files]

    def before_fit(self) -> None:
        self.trainer.callbacks.append(RecordConfigFiles(self.config_files()))
        self.resolve_last_checkpoint()
        if getattr(self.datamodule, "val_size", None) == 0:
            no_validation(self.trainer)

    before_validate = before_test = resolve_last_checkpoint

    def before_predict(self) -> None:
        # the images to predict, checked in every process before DDP starts any other
        if check_predict_input := getattr(self.datamodule, "check_predict_input", None):
            check_predict_input()
        self.resolve_last_checkpoint()

    def _run_subcommand(self, subcommand: str) -> None:
        run_folders = RunFolders(self.trainer)  # before Lightning writes anything
        try:
            super()._run_subcommand(subcommand)
        except Exception:
            run_folders.remove_if_not_started()
            raise
        leave_process_group()


def no_validation(trainer: Trainer) -> None:
    """A fit that holds out no images (``data.val_size 0``, as airbench94 trains on all
    50,000): no validation loop (``limit_val_batches`` 0, so no sanity check either) and no
    checkpoint of the best ``val/...`` (``save_top_k`` 0); ``last.ckpt`` is still saved
    after every epoch. Without this Lightning warns that the validation loader is empty,
    and at every epoch end that ``val/acc`` was never logged."""
    trainer.limit_val_batches = 0
    for callback in trainer.checkpoint_callbacks:
        if callback.monitor and callback.monitor.startswith("val/"):
            callback.save_top_k = 0
    rank_zero_info(
        "no validation: data.val_size is 0 (every training image trains), so no checkpoint "
        "of the best val/acc is kept; last.ckpt is saved after every epoch"
    )


def leave_process_group() -> None:
    """After a distributed run, every rank waits for the others and closes the process
    group. Lightning leaves it open until the interpreter exits; where rank 0 hosts the
    rendezvous store (SLURM, no torchrun agent), the rank that exits later then loses the
    store under a running c10d thread and aborts ("terminate called without an active
    exception", status -6) after a run that went well."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def check_sync_batchnorm(trainer: Trainer) -> None:
    """Raise before any process starts where torch's SyncBatchNorm cannot run (it raises
    "SyncBatchNorm layers only work with GPU modules" in every rank once DDP wraps the net)."""
    if isinstance(trainer.accelerator, CPUAccelerator):
        raise ConfigError(
            f"trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm runs on CUDA and"
            f" XPU devices only, and this run has {trainer.world_size} CPU processes. Set it"
            " to false (each process then normalises its own batch with its own statistics)."
        )


def newest_last_checkpoint(
    trainer: Trainer,
    last: ModelCheckpoint,
    current: RunConfig,
    datamodule: type,
    subcommand: str,
    config_files: list[str] | None = None,
) -> str | None:
    """The most recently written ``last.ckpt`` of an earlier run of config ``current``,
    where ``last`` (the ``last_checkpoint`` callback) saves: its ``dirpath`` when set, else,
    as ``ModelCheckpoint`` resolves it, ``<save_dir>/<name>/*/checkpoints/`` of the first
    logger (``default_root_dir`` when the logger has no ``save_dir``: Wandb, MLflow, Comet
    have no ``root_dir``) or ``<default_root_dir>/checkpoints/`` without a logger. Prints
    which it takes and which it passed over. When there is none, ``CheckpointError`` where
    a file it could not read may be this config's run (cut short), or for ``validate`` /
    ``test`` / ``predict`` (nothing to evaluate), or for ``fit`` where the newest run of the
    same ``config_files`` has other settings (the user asked to resume it); else ``fit``
    starts a new run (None)."""
    name = f"{last.filename or 'last'}{last.FILE_EXTENSION}"
    if last.dirpath is not None:
        where, pattern = Path(last.dirpath), name
    elif trainer.loggers:
        logger = trainer.loggers[0]
        where = Path(logger.save_dir or trainer.default_root_dir) / str(logger.name)
        pattern = f"*/checkpoints/{name}"
    else:
        where, pattern = Path(trainer.default_root_dir), f"checkpoints/{name}"
    pick = pick_last(where.glob(pattern), current, datamodule.__qualname__, config_files or [])
    if pick.path is None and pick.damaged:
        raise CheckpointError(f"{pick.report(where, fit=False)}\n{pick.damaged[0][1]}")
    if pick.path is None and subcommand != "fit":
        raise CheckpointError(pick.report(where, fit=False))
    if pick.path is None and pick.changed is not None:
        path, why = pick.changed
        raise CheckpointError(settings_changed_message(path, where, why))
    rank_zero_info(pick.report(where))
    return None if pick.path is None else str(pick.path)


def run(args: ArgsType = None, **kwargs: Any) -> GroupwiseCLI:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``) and return it (for tests and
    tools); ``kwargs`` go to ``LightningCLI``, e.g. ``run=False`` to build without running."""
    # A group rule's ``optimizer: {class_path, init_args}`` stays data for
    # groupwise.optim.per_group to resolve; without this, jsonargparse tries to instantiate
    # such specs inside ``Any`` (deprecated, with a warning; the default from jsonargparse 5).
    if "instantiate_subclass_spec_in_any" in inspect.signature(set_parsing_settings).parameters:
        set_parsing_settings(instantiate_subclass_spec_in_any=False)
    with quiet_console():  # Lightning's chatter hidden, for this run only (runtime.console)
        return GroupwiseCLI(
            Classifier,
            CIFAR10DataModule,
            trainer_class=GroupwiseTrainer,
            auto_configure_optimizers=False,
            parser_class=GroupwiseArgumentParser,
            save_config_kwargs={"overwrite": True},
            args=args,
            **kwargs,
        )


def main() -> None:
    """The ``groupwise`` console script: a ``UserError`` prints one message and exits 2.
    ``groupwise sweep ...`` is ``groupwise.sweep`` (an Optuna study whose trials are fits)."""
    with exit_on_user_error():
        if sys.argv[1:2] == ["sweep"]:
            from groupwise.sweep import main as sweep  # imports Optuna only for a sweep

            sweep(sys.argv[2:], fit=run)
        else:
            run()
