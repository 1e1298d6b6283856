"""A callback for `groupwise` subprocesses: the process's minor page faults at the start of
every training step, written as JSON to ``$PAGE_FAULTS_OUT`` when training ends."""

import json
import os
import resource

from lightning.pytorch import Callback


class StepFaults(Callback):
    def __init__(self) -> None:
        self.faults: list[tuple[int, int, int]] = []  # (epoch, batch_idx, minor faults so far)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        self.faults.append((trainer.current_epoch, batch_idx, faults))

    def on_train_end(self, trainer, pl_module) -> None:
        with open(os.environ["PAGE_FAULTS_OUT"], "w") as f:
            json.dump(self.faults, f)
