"""One entry point for every benchmark: ``python scripts/bench.py NAME [options]``.

``python scripts/bench.py --help`` lists the benchmarks, ``... NAME --help`` the options of
one. Each prints the machine line first, then its table, then the path of its JSON record
(``bench_results/``). From a clean clone, ``bash scripts/bench.sh NAME [options]`` sets up
``.venv`` and the data first. The benchmarks live in ``scripts/benchmarks/`` (the registry
in its ``__init__.py``, the shared code and how to add one in ``harness.py``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parent)
if SCRIPTS not in sys.path:  # benchmarks/ imports when this file is loaded by path
    sys.path.insert(0, SCRIPTS)

from benchmarks import REGISTRY, harness  # noqa: E402


def summary(module: str) -> str:
    """The first line of a benchmark module's docstring, read without importing it."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(Path(spec.origin).read_text())
    return (ast.get_docstring(tree) or "").strip().splitlines()[0]


def parser_for(chosen: str | None) -> argparse.ArgumentParser:
    """The parser with one subcommand per benchmark; only ``chosen``'s module is imported
    (for its options), so the list and each ``--help`` stay quick."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="benchmark", metavar="NAME", required=True)
    for name, module in REGISTRY.items():
        help_line = summary(module)
        sub = subparsers.add_parser(
            name,
            help=help_line,
            description=help_line,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == chosen:
            loaded = importlib.import_module(module)
            sub.description = loaded.__doc__
            loaded.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = argv[0] if argv and argv[0] in REGISTRY else None
    args = parser_for(chosen).parse_args(argv)
    module = importlib.import_module(REGISTRY[args.benchmark])
    options = {k: v for k, v in vars(args).items() if k != "benchmark"}
    sys.argv = sys.argv[:1]  # the groupwise CLI inside parses its own args, not these
    info = harness.machine()
    print(harness.machine_line(info), flush=True)
    record = harness.Record(args.benchmark, ["scripts/bench.py", *argv], options, info)
    module.run(args, record)
    path = record.write()
    shown = path.relative_to(harness.REPO) if path.is_relative_to(harness.REPO) else path
    print(f"\nrecord: {shown}")


if __name__ == "__main__":
    main()
