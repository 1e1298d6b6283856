"""The CLI's argument parser: Lightning's, with one-line usage errors and the nearest valid
key for an unknown one; and the ``--config`` files of a command line."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

from groupwise.errors import EXIT_CODE, did_you_mean


class GroupwiseArgumentParser(LightningArgumentParser):
    """Lightning's parser whose usage errors are one line. jsonargparse prints the whole usage
    (120 lines for ``fit``) before the error and suggests nothing for an unknown key; here
    ``error: <message>`` comes alone, with the nearest valid key for an unknown one, exit 2.
    Nested parsers (``exit_on_error=False``: jsonargparse catches their errors) and
    ``JSONARGPARSE_DEBUG`` keep jsonargparse's own behaviour. No abbreviated options: argparse
    would take ``--trainer.max_epoch`` for ``--trainer.max_epochs``, which in a config file is
    an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        hint = nearest_key(message, parser)
        message = " ".join(line.strip() for line in message.splitlines()).rstrip(".")
        sys.stderr.write(f"error: {message}{hint}; `{prog} --help` lists every option\n")
        self.exit(EXIT_CODE)


def nearest_key(message: str, parser: LightningArgumentParser) -> str:
    """``" (did you mean 'k'?)"`` for the unknown key of a jsonargparse error ``message``,
    ``k`` the parser's nearest key (``--k`` for a command-line option), else ``""``."""
    # jsonargparse 4.44 writes "Unrecognized", later releases "unrecognized"
    option = re.match(r"unrecognized arguments: --([^\s=]+)", message, re.IGNORECASE)
    key = re.search(r"(?:Group '([^']+)' )?does not accept option '([^']+)'", message)
    init_arg = re.search(
        r"(?:Option '([^']+)' is not accepted|unrecognized arguments: --([^\s=]+))"
        r".*class_path='([^']+)'",
        message,
        re.IGNORECASE,
    )
    if option:
        unknown, dashes = option[1], "--"
    elif key:
        unknown, dashes = ".".join(k for k in key.groups() if k), ""
    elif init_arg:  # in a class's init_args: jsonargparse names the class it built
        name, names = init_arg[1] or init_arg[2], init_parameters(init_arg[3])
        # two short names ('ar' for 'lr') fall below difflib's cutoff: compare them with
        # their init_args. prefix then
        long = [n for n in names if n.startswith("init_args.")]
        return did_you_mean(name, names) or did_you_mean(f"init_args.{name}", long)
    else:
        return ""
    try:
        keys = list(parser.get_defaults(skip_validation=True).keys())
    except Exception:  # a default config file that does not load: no hint, the error stands
        return ""
    return did_you_mean(unknown, keys).replace(" '", f" '{dashes}", 1)


def init_parameters(class_path: str) -> list[str]:
    """The keys of ``{class_path, init_args}`` and the parameters of class ``class_path``
    (none where it does not import)."""
    module, _, name = class_path.rpartition(".")
    try:
        parameters = list(
            inspect.signature(getattr(importlib.import_module(module), name)).parameters
        )
    except (ImportError, AttributeError, TypeError, ValueError):
        parameters = []
    return ["class_path", "init_args", *parameters, *(f"init_args.{p}" for p in parameters)]


def config_paths(argv: list[str]) -> list[str]:
    """The files given with ``--config FILE``, ``--config=FILE`` or ``-c FILE``."""
    paths = []
    for flag, value in zip(argv, [*argv[1:], ""], strict=False):  # argv may be empty
        if flag in ("--config", "-c"):
            paths.append(value)
        elif flag.startswith("--config="):
            paths.append(flag.split("=", 1)[1])
    return paths
