"""The ``groupwise`` command (``groupwise.cli:main``): Lightning's CLI with this template's
defaults (``command``), its one-line usage errors (``parser``), what ``fit`` checks before
anything is written (``preflight``), and the removal of what a failed start made
(``run_folders``)."""

from groupwise.cli.command import (
    GroupwiseCLI,
    check_sync_batchnorm,
    leave_process_group,
    main,
    newest_last_checkpoint,
    run,
)
from groupwise.cli.parser import GroupwiseArgumentParser, config_paths, init_parameters, nearest_key
from groupwise.cli.run_folders import FirstBatch, RunFolders, logger_dirs, remove_empty_folders

__all__ = [
    "FirstBatch",
    "GroupwiseArgumentParser",
    "GroupwiseCLI",
    "RunFolders",
    "check_sync_batchnorm",
    "config_paths",
    "init_parameters",
    "leave_process_group",
    "logger_dirs",
    "main",
    "nearest_key",
    "newest_last_checkpoint",
    "remove_empty_folders",
    "run",
]
