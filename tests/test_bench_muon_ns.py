"""``bash scripts/bench.sh muon_ns`` (scripts/benchmarks/muon_ns.py) on tiny matrices: the
line naming torch's capability and Muon's ``auto`` choice on this CPU, and one table row
per shape and dtype."""

from __future__ import annotations

import argparse

import pytest
import torch
from cli_run import ROOT

from groupwise.optim.muon import auto_ns_dtype


@pytest.fixture
def muon_ns(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from benchmarks import muon_ns

    return muon_ns


def parse(muon_ns, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    muon_ns.add_arguments(parser)
    return parser.parse_args(argv)


def test_it_times_each_shape_in_each_dtype(muon_ns, capsys):
    from benchmarks.harness import Record

    args = parse(muon_ns, ["--shapes", "8x12", "12x8", "--repeats", "2", "--warmup", "0"])
    record = Record("muon_ns", [], vars(args), {})
    muon_ns.run(args, record)
    out = capsys.readouterr().out.splitlines()
    auto = str(auto_ns_dtype(torch.device("cpu"))).removeprefix("torch.")
    assert out[0].startswith("CPU ") and out[0].endswith(f"Muon ns_dtype auto -> {auto}")
    assert f"torch capability {torch.backends.cpu.get_cpu_capability()}" in out[0]
    (table,) = record.tables
    assert table["title"] == "Newton-Schulz, 3 iterations, best / median of 2 calls"
    assert [row[:2] for row in table["rows"]] == [
        ["8 x 12", "bfloat16"], ["8 x 12", "float32"],
        ["12 x 8", "bfloat16"], ["12 x 8", "float32"],
    ]  # fmt: skip
    assert [row[3] for row in table["rows"] if row[1] == "float32"] == ["1.00x", "1.00x"]
    assert set(record.results) == {"8x12", "12x8"}
    assert [len(v) for v in record.results["8x12"].values()] == [2, 2]


def test_a_bad_shape_is_one_usage_error(muon_ns, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(muon_ns, ["--shapes", "128by576"])
    assert exit_info.value.code == 2
    assert "a shape is ROWSxCOLUMNS, e.g. 128x576; got '128by576'" in capsys.readouterr().err
