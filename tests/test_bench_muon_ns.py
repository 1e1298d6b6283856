"""scripts/bench_muon_ns.py runs through ``main(argv)`` on tiny matrices and prints the
machine line (with Muon's ``auto`` choice on this CPU) and one line per shape and dtype."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from cli_run import ROOT

from groupwise.optim.muon import auto_ns_dtype

sys.path.insert(0, str(ROOT / "scripts"))
import bench_muon_ns  # noqa: E402


def test_it_times_each_shape_in_each_dtype(capsys):
    bench_muon_ns.main(["--shapes", "8x12", "12x8", "--repeats", "2", "--warmup", "0"])
    out = capsys.readouterr().out.splitlines()
    auto = str(auto_ns_dtype(torch.device("cpu"))).removeprefix("torch.")
    assert out[0].startswith("CPU ") and out[0].endswith(f"Muon ns_dtype auto -> {auto}")
    assert f"torch capability {torch.backends.cpu.get_cpu_capability()}" in out[0]
    assert out[1] == "Newton-Schulz, 3 iterations, best / median of 2 calls"
    rows = [
        re.match(r"  (\d+) x (\d+) +(\w+): best .*\( ?([\d.]+)x float32's\)", x) for x in out[2:]
    ]
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("8", "12", "bfloat16"), ("8", "12", "float32"),
        ("12", "8", "bfloat16"), ("12", "8", "float32"),
    ]  # fmt: skip
    assert [r[4] for r in rows if r[3] == "float32"] == ["1.00", "1.00"]


def test_a_bad_shape_is_one_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_muon_ns.main(["--shapes", "128by576"])
    assert exit_info.value.code == 2
    assert "a shape is ROWSxCOLUMNS, e.g. 128x576; got '128by576'" in capsys.readouterr().err
