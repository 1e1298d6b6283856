"""configs/airbench94.yaml for tests on the fabricated data, and callbacks that watch its
whitening init (importable by class path in a ``groupwise`` subprocess: ``tests/`` is on its
PYTHONPATH)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import yaml
from cli_run import ROOT
from lightning.pytorch.callbacks import Callback

from groupwise.callbacks import WhiteningInit

AIRBENCH = ROOT / "configs" / "airbench94.yaml"
TINY = ["--model.net.init_args.widths", "[8, 16, 16]"]


def recipe_config(
    path: Path, images: int = 30, whitening: str | None = None, muon: dict | None = None
) -> Path:
    """configs/airbench94.yaml with WhiteningInit on ``images`` images (the fabricated data
    has 60 training images), its class path ``whitening`` where given, and the
    ``filters`` group's Muon options updated with ``muon``."""
    config = yaml.safe_load(AIRBENCH.read_text())
    for rule in config["model"]["param_groups"]:
        if rule["name"] == "filters":
            rule["optimizer"]["init_args"].update(muon or {})
    (callback,) = config["trainer"]["callbacks"]
    callback["init_args"]["images"] = images
    if whitening:
        callback["class_path"] = whitening
    path.write_text(yaml.safe_dump(config))
    return path


class CountingWhiteningInit(WhiteningInit):
    """WhiteningInit that counts its computations (``calls``) and writes the count to
    ``<out>/calls-rank<r>.txt`` at the end of fit, where ``out`` is given."""

    def __init__(self, *args, out: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.out = out

    def compute(self, trainer, conv):
        self.calls += 1
        return super().compute(trainer, conv)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out:
            Path(self.out).mkdir(parents=True, exist_ok=True)
            path = Path(self.out) / f"calls-rank{trainer.global_rank}.txt"
            path.write_text(str(self.calls))


class RecordStart(Callback):
    """Saves each rank's net state dict as training starts (after every init) to
    ``<out>/start-rank<r>.pt``; with ``mirror_rank``, that rank's training images are
    mirrored in ``setup`` (so whitening filters computed there would differ from rank 0's)
    and rank 0's own sample is saved too (``sample``)."""

    def __init__(self, out: str, mirror_rank: int | None = None) -> None:
        self.out = Path(out)
        self.mirror_rank = mirror_rank

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank == self.mirror_rank:
            images = trainer.datamodule.train_set.tensors[0]
            images.copy_(images.flip(3))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.net.state_dict().items()}
        record = {"state_dict": state, "sample": trainer.datamodule.train_sample(30)}
        torch.save(record, self.out / f"start-rank{trainer.global_rank}.pt")


class StopAfterEpoch(Callback):
    """Stops the fit after epoch ``epoch`` (its last.ckpt saved), as an interrupted run."""

    def __init__(self, epoch: int = 0) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class RecordWhitenBias(Callback):
    """Keeps ``net.whiten.bias`` after every optimizer step: ``biases[s]`` is its value
    after step ``s``, ``biases[-1]`` (key -1) before the first."""

    def __init__(self) -> None:
        self.biases: dict[int, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.biases[-1] = pl_module.net.whiten.bias.detach().clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.biases[trainer.global_step - 1] = pl_module.net.whiten.bias.detach().clone()
