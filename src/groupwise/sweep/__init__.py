"""``groupwise sweep``: Optuna studies over config values, each trial a real ``fit``."""

from groupwise.sweep.command import main

__all__ = ["main"]
