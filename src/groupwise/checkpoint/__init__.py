"""Checkpoint files: atomic saves, safe loads, and whether one fits this run."""

from groupwise.checkpoint.io import (
    AtomicCheckpointIO,
    CheckpointError,
    CheckpointSaveError,
    load_checkpoint_file,
)

__all__ = ["AtomicCheckpointIO", "CheckpointError", "CheckpointSaveError", "load_checkpoint_file"]
