"""Checkpoints written with weight averaging: which of their weights a run loads.

Lightning's ``WeightAveraging`` callbacks (``EMAWeightAveraging``; see
``groupwise.callbacks.ema``) save the averaged weights as the checkpoint's ``state_dict``
and the training weights as ``current_model_state``. Whatever loads ``state_dict`` (a
resume, ``validate`` / ``test`` / ``predict --ckpt_path``, ``--model.init_weights``,
``load_from_checkpoint``) therefore gets the averaged weights; only the callback itself
puts the training weights back on a resume. A resume without the callback would silently
continue training from the averaged weights, with the optimizer state of the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from groupwise.checkpoint.io import CheckpointError

TRAINING_WEIGHTS_KEY = "current_model_state"


def holds_averaged_weights(checkpoint: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` holds averaged weights (and ``current_model_state`` the
    training weights)."""
    return TRAINING_WEIGHTS_KEY in checkpoint


def check_resume_averaging(
    checkpoint: Mapping[str, Any], averaging: bool, source: str, path: str | None = None
) -> None:
    """Raise ``CheckpointError`` when a run without weight averaging resumes from a
    checkpoint written with it."""
    if averaging or not holds_averaged_weights(checkpoint):
        return
    raise CheckpointError(
        f"{source} was written with weight averaging (e.g. EMAWeightAveraging): its "
        f"state_dict holds the averaged weights, '{TRAINING_WEIGHTS_KEY}' the training "
        "weights. This run has no weight-averaging callback, so a resume would train on from "
        "the averaged weights with the optimizer state of the training weights. Add the "
        "callback to trainer.callbacks as in the run that wrote it, or start a new run from "
        f"the averaged weights with --model.init_weights {path or 'CHECKPOINT'}."
    )


def weights_note(checkpoint: Mapping[str, Any]) -> str:
    """``" (its averaged weights)"`` for a checkpoint written with weight averaging."""
    return " (its averaged weights)" if holds_averaged_weights(checkpoint) else ""
