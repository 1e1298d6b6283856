"""The benchmark entry point (``scripts/bench.py``): every command the docs name exists and
its ``--help`` runs, every row of ``docs/benchmarks.md`` names a command, and the shared
harness pairs runs in alternating order, reports medians and ranges, and writes its record.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_run import ROOT

SCRIPTS = ROOT / "scripts"
DOCS = [ROOT / "docs" / "benchmarks.md", ROOT / "README.md"]
#: a command as the docs write it, up to the closing backtick (``NAME``: the usage line)
COMMAND = re.compile(r"bash scripts/bench\.sh ([a-z][a-z0-9_]*)([^`\n]*)")
#: a benchmark run by a shell script of scripts/ (up to a pipe, ``&`` or the line's end)
SCRIPT_COMMAND = re.compile(r"scripts/bench\.py ([a-z][a-z0-9_]*)([^&|;\n]*)")


@pytest.fixture
def bench(monkeypatch):
    """``scripts/bench.py`` as a module, with ``scripts/`` on ``sys.path`` for this test."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench", SCRIPTS / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented() -> list[tuple[str, str, list[str]]]:
    """(where, name, arguments) of every ``bash scripts/bench.sh NAME ...`` in the docs and
    every ``scripts/bench.py NAME ...`` in the shell scripts (``airbench_pair.sh``)."""
    found = []
    pages = [(page, COMMAND) for page in DOCS]
    pages += [(script, SCRIPT_COMMAND) for script in sorted(SCRIPTS.glob("*.sh"))]
    for page, command in pages:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for match in command.finditer(line):
                where = f"{page.relative_to(ROOT)}:{number}"
                found.append((where, match[1], shlex.split(match[2])))
    return found


def options_of(parser) -> set[str]:
    """Every option string of a subcommand's parser (``--steps``, ``-h``, ...)."""
    return {option for action in parser._actions for option in action.option_strings}


def run_main(bench, argv: list[str]) -> tuple[int, str]:
    """``bench.main(argv)`` in this process: its exit code (0 when it returned) and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            bench.main(argv)
        except SystemExit as exit_:
            return exit_.code or 0, out.getvalue()
    return 0, out.getvalue()


def test_the_docs_name_benchmark_commands():
    """The parser below finds the commands (a guard against a regex that finds none)."""
    names = {name for _, name, _ in documented()}
    assert {"fast", "parity", "loader", "step_time", "step_ops", "host_memory"} <= names


@pytest.mark.parametrize(
    "where,name,arguments", documented(), ids=[f"{w}-{n}" for w, n, _ in documented()]
)
def test_every_documented_command_exists_and_takes_its_options(bench, where, name, arguments):
    from benchmarks import REGISTRY

    assert name in REGISTRY, f"{where}: no benchmark {name!r}; there are {sorted(REGISTRY)}"
    subparser = bench.parser_for(name)._subparsers._group_actions[0].choices[name]
    ours = arguments[: arguments.index("--")] if "--" in arguments else arguments
    unknown = {a for a in ours if a.startswith("--")} - options_of(subparser)
    assert not unknown, f"{where}: {name} has no option {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted({name for _, name, _ in documented()}))
def test_help_of_each_documented_benchmark_runs(bench, name):
    code, out = run_main(bench, [name, "--help"])
    assert code == 0
    assert out.startswith(f"usage: scripts/bench.py {name} [-h]")


def test_help_lists_every_benchmark_in_a_fresh_process():
    from benchmarks import REGISTRY

    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    listed = re.findall(r"^    (\w+)", done.stdout, re.MULTILINE)
    assert listed == list(REGISTRY)


def test_a_benchmark_help_runs_in_a_fresh_process():
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "step_ops", "--help"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "--variants" in done.stdout


def test_bench_sh_names_the_registry_on_a_bad_name_before_any_set_up():
    from benchmarks import REGISTRY

    done = subprocess.run(
        ["bash", str(SCRIPTS / "bench.sh"), "nosuch"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"usage: bash scripts/bench.sh NAME [args]; NAME is one of: {' '.join(REGISTRY)}"
        " (got 'nosuch')\n"
    )


def table_rows(page: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: cell}) of every row of every table with a ``command`` column."""
    rows, header = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            rows.append((number, dict(zip(header, cells, strict=True))))
    return rows


def test_every_row_of_the_benchmarks_page_names_its_command():
    """A command in backticks, or ``same`` (the row above's); never an ad-hoc script."""
    page = ROOT / "docs" / "benchmarks.md"
    rows = table_rows(page)
    assert len(rows) > 40
    previous = None
    for number, row in rows:
        command = row["command"]
        where = f"docs/benchmarks.md:{number}"
        assert "ad-hoc" not in command and "not in the repository" not in command, where
        if command.startswith("same"):
            assert previous is not None, f"{where}: 'same' with no command above"
        else:
            assert "`" in command, f"{where}: no command in {command!r}"
            previous = command
    assert "ad-hoc" not in page.read_text()


# The harness, on a fake timed function


def test_round_orders_alternate_two_variants_and_rotate_more(bench):
    from benchmarks.harness import round_orders

    assert round_orders(["A", "B"], 4) == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert round_orders(["A", "B", "C"], 4) == [
        ["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"], ["A", "B", "C"],
    ]  # fmt: skip


def test_run_rounds_runs_back_to_back_in_alternating_order_and_keeps_each_round(bench, capsys):
    from benchmarks.harness import paired_ratios, run_rounds

    calls = []
    seconds = {"A": iter([2.0, 4.0, 3.0]), "B": iter([1.0, 1.0, 2.0])}

    def measure(name: str) -> float:
        calls.append(name)
        return next(seconds[name])

    rounds = run_rounds(["A", "B"], 3, measure, lambda name, s: f"{name} {s:.1f} s")
    assert calls == ["A", "B", "B", "A", "A", "B"]
    assert rounds.results == {"A": [2.0, 4.0, 3.0], "B": [1.0, 1.0, 2.0]}
    assert paired_ratios(rounds.results["A"], rounds.results["B"]) == [2.0, 4.0, 1.5]
    assert capsys.readouterr().out.splitlines() == [
        "round 0 (A -> B): A 2.0 s, B 1.0 s",
        "round 1 (B -> A): A 4.0 s, B 1.0 s",
        "round 2 (A -> B): A 3.0 s, B 2.0 s",
    ]
    assert rounds.as_json()[1] == {"round": 1, "order": ["B", "A"], "results": {"B": 1.0, "A": 4.0}}


def test_spread_is_the_median_and_the_range(bench):
    from benchmarks.harness import Spread

    assert Spread.of([0.9, 1.2, 0.8, 1.0]) == Spread(0.95, 0.8, 1.2)
    assert Spread.of([0.9, 1.2, 0.8]).format() == "0.900 (0.800-1.200)"
    assert Spread.of([-0.5, 1.0, 2.0]).format(".1f") == "1.0 (-0.5 to 2.0)"


def test_cpu_info_reads_the_model_and_the_flags_that_matter(bench):
    from benchmarks.harness import cpu_info, machine_line

    text = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f amx_bf16\n"
    info = cpu_info(text)
    assert info == {
        "model": "Intel Xeon",
        "flags": {"avx2": True, "avx512f": True, "avx512_bf16": False, "amx_bf16": True},
    }
    line = machine_line({
        "cpu": info, "cores": 2, "memory_gib": 24.0, "torch": "2.9.0", "torch_threads": 2,
        "lightning": "2.6.0", "python": "3.11.7", "gpu": None, "commit": "abc1234",
    })  # fmt: skip
    assert line == (
        "machine: Intel Xeon (avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 yes), 2 cores,"
        " 24 GiB; torch 2.9.0 (2 threads), lightning 2.6.0, Python 3.11.7; GPU: none;"
        " commit abc1234"
    )


FAKE = '''
"""A fake benchmark: two variants whose seconds come from a list."""

from benchmarks.harness import Spread, paired_ratios, run_rounds

SECONDS = {"a": [1.0, 3.0, 2.0], "b": [2.0, 2.0, 2.0]}


def add_arguments(parser):
    parser.add_argument("--repeats", type=int, default=3)


def run(args, record):
    seconds = {name: iter(values) for name, values in SECONDS.items()}
    rounds = run_rounds(["a", "b"], args.repeats, lambda name: next(seconds[name]))
    record.add("rounds", rounds.as_json())
    ratio = Spread.of(paired_ratios(rounds.results["a"], rounds.results["b"]))
    record.table("a / b", ["", "ratio"], [["a over b", ratio.format(".2f")]])
'''


def test_a_subcommand_prints_the_machine_line_its_table_and_writes_its_record(
    bench, monkeypatch, tmp_path
):
    """A benchmark module and one registry line make a subcommand; the record is JSON."""
    from benchmarks import REGISTRY, harness

    (tmp_path / "fake_benchmark.py").write_text(textwrap.dedent(FAKE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "fake", "fake_benchmark")
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")

    code, out = run_main(bench, ["fake", "--repeats", "3"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("machine: ") and " cores" in lines[0] and "torch " in lines[0]
    assert lines[1:5] == ["", "a / b", " " * 21 + "ratio", "a over b  1.00 (0.50-1.50)"]
    (path,) = (tmp_path / "results").glob("fake-*.json")
    assert lines[-1] == f"record: {path}"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "fake"
    assert record["command"] == ["scripts/bench.py", "fake", "--repeats", "3"]
    assert record["args"] == {"repeats": 3}
    assert record["machine"]["cpu"]["flags"].keys() == {
        "avx2",
        "avx512f",
        "avx512_bf16",
        "amx_bf16",
    }
    assert [r["order"] for r in record["results"]["rounds"]] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert record["results"]["rounds"][1]["results"] == {"b": 2.0, "a": 3.0}
    assert record["tables"] == [
        {"title": "a / b", "header": ["", "ratio"], "rows": [["a over b", "1.00 (0.50-1.50)"]]}
    ]
