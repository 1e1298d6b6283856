"""A Lightning logger without a ``root_dir``, as WandbLogger, MLFlowLogger and CometLogger are:
it has a ``save_dir``, a ``name`` and a ``version``, from which ``ModelCheckpoint`` makes
``<save_dir>/<name>/<version>/checkpoints``, and logs nothing anywhere."""

from typing import Any

from lightning.pytorch.loggers.logger import Logger


class NoRootDirLogger(Logger):
    def __init__(self, save_dir: str, version: str, name: str = "runs") -> None:
        super().__init__()
        self._save_dir, self._version, self._name = save_dir, version, name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def root_dir(self) -> None:
        return None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass
