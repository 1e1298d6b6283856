"""groupwise.optim.Muon's ``ns_dtype``: the Newton-Schulz iteration in bfloat16 where the
device computes it fast, float32 otherwise, an explicit value overriding; decided once per
device per optimizer; shown in the group table; no state (a resume may change it).

The hardware is not patched: ``cpu_has_fast_bfloat16`` takes the capability mapping as
an argument, and the tests that need the other answer monkeypatch groupwise's own
module-level functions (``groupwise.optim.muon.cpu_has_fast_bfloat16``, ...)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from cli_run import load, quick
from test_per_group_optimizer import write_config
from timm.optim.muon import muon as timm_muon
from timm.optim.muon import zeropower_via_newtonschulz

from groupwise.cli import run
from groupwise.optim import Muon, ParamGroupError, build_optimizer
from groupwise.optim import muon as muon_module
from groupwise.optim.param_groups import describe_optimizer

# torch.cpu.get_capabilities() of real machines, the keys that matter
AVX2_EPYC = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False,
             "amx_bf16": False}  # fmt: skip
AVX512_NO_BF16 = {**AVX2_EPYC, "avx512_f": True, "avx512_bw": True, "avx512_vl": True,
                  "avx512_dq": True}  # fmt: skip  # the Intel Xeon of this project's CI
AVX512_BF16 = {**AVX512_NO_BF16, "avx512_bf16": True}  # the AMD EPYC of 2026-11-30
AMX = {**AVX512_NO_BF16, "amx_bf16": True, "amx_tile": True}  # Sapphire Rapids
ARM_BF16 = {"architecture": "arm64", "neon": True, "bf16": True, "sve": True, "sve_bf16": True}
ARM_NO_BF16 = {"architecture": "arm64", "neon": True, "bf16": False}


@pytest.mark.parametrize(
    ("capabilities", "fast"),
    [
        (AVX2_EPYC, False),
        (AVX512_NO_BF16, False),
        (AVX512_BF16, True),
        (AMX, True),
        (ARM_BF16, True),
        (ARM_NO_BF16, False),
        ({}, False),
    ],
    ids=["avx2", "avx512", "avx512_bf16", "amx", "arm_bf16", "arm", "unknown"],
)
def test_the_cpu_is_fast_in_bfloat16_only_with_bfloat16_instructions(capabilities, fast):
    assert muon_module.cpu_has_fast_bfloat16(capabilities) is fast


@pytest.mark.parametrize(("cpu_fast", "cuda_fast"), [(False, False), (True, True), (False, True)])
def test_auto_picks_bfloat16_where_the_device_is_fast_in_it(monkeypatch, cpu_fast, cuda_fast):
    asked = []
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: cpu_fast)
    monkeypatch.setattr(
        muon_module, "cuda_has_fast_bfloat16", lambda device: asked.append(device) or cuda_fast
    )
    dtype = {True: torch.bfloat16, False: torch.float32}
    assert muon_module.auto_ns_dtype(torch.device("cpu")) == dtype[cpu_fast]
    assert muon_module.auto_ns_dtype(torch.device("cuda", 1)) == dtype[cuda_fast]
    assert asked == [torch.device("cuda", 1)]  # the device itself, not the current one
    assert muon_module.auto_ns_dtype(torch.device("meta")) == torch.float32  # other types


def test_this_machine_s_choice_follows_its_capabilities():
    fast = muon_module.cpu_has_fast_bfloat16(torch.cpu.get_capabilities())
    expected = torch.bfloat16 if fast else torch.float32
    assert muon_module.auto_ns_dtype(torch.device("cpu")) == expected
    assert Muon([torch.nn.Parameter(torch.ones(2, 2))]).ns_dtype_on(torch.device("cpu")) == expected


def first_step(grad: torch.Tensor, **options) -> tuple[torch.Tensor, Muon]:
    """The new value of a zero parameter after one Muon step with gradient ``grad``."""
    param = torch.nn.Parameter(torch.zeros_like(grad))
    optimizer = Muon([param], **options)
    param.grad = grad.clone()
    optimizer.step()
    return param.detach(), optimizer


@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (8, 3, 3, 3)], ids=["2d", "tall", "4d"])
def test_the_float32_path_is_exactly_the_float32_iteration_of_the_update(monkeypatch, shape):
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: False)
    torch.manual_seed(0)
    grad, lr, momentum = torch.randn(shape), 0.05, 0.9
    got, _ = first_step(grad, lr=lr, momentum=momentum, weight_decay=0.0, ns_steps=3)
    update = grad.lerp(torch.lerp(torch.zeros_like(grad), grad, 1 - momentum), momentum)
    matrix = update.reshape(shape[0], -1)
    ortho = zeropower_via_newtonschulz(
        matrix, 3, [muon_module.DEFAULT_NS_COEFFICIENTS], dtype=torch.float32
    )
    scale = max(1, matrix.shape[0] / matrix.shape[1]) ** 0.5  # adjust_lr_fn "original"
    expected = torch.zeros(shape).add_(ortho.reshape(shape), alpha=-lr * scale)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    # and not bfloat16's: the explicit value wins over the machine's choice
    assert not torch.equal(got, first_step(grad, lr=lr, momentum=momentum, weight_decay=0.0,
                                           ns_steps=3, ns_dtype="bfloat16")[0])  # fmt: skip


def test_auto_on_a_fast_device_is_exactly_torch_optim_muon_s_bfloat16_step(monkeypatch):
    """torch.optim.Muon iterates in bfloat16 everywhere; ``auto`` on a device fast in it is
    torch's step, bit for bit (forced ``ns_dtype: bfloat16``: tests/test_muon.py)."""
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: True)
    torch.manual_seed(1)
    ours, theirs = torch.nn.Parameter(torch.randn(12, 30)), torch.nn.Parameter(torch.zeros(12, 30))
    theirs.data.copy_(ours.data)
    options = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.1}
    a, b = Muon([ours], **options), torch.optim.Muon([theirs], **options)
    for _ in range(3):
        grad = torch.randn(12, 30)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)


def test_bfloat16_is_exactly_the_timm_update_muon_called_before_ns_dtype(monkeypatch):
    """In bfloat16 the step is timm's functional ``muon`` (flatten mode, which Muon called
    before it had ``ns_dtype``) bit for bit: nothing changed where bfloat16 is chosen."""
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: True)
    torch.manual_seed(4)
    ours = torch.nn.Parameter(torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    theirs, buffer = ours.detach().clone(), torch.zeros(8, 4, 3, 3)
    options = {"lr": 0.08, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01, "ns_steps": 3}
    optimizer = Muon([ours], **options)
    for _ in range(3):
        grad = torch.randn(8, 4, 3, 3)
        ours.grad = grad.clone()
        optimizer.step()
        timm_muon([theirs], [grad], [buffer], **options, ns_coefficients="original", eps=1e-7,
                  safety_factor=1.0, adjust_lr_fn="original", conv_mode="flatten",
                  normalize_spatial=False, scale_eps=False)  # fmt: skip
    assert torch.equal(ours, theirs)


def test_float32_forced_on_a_fast_device_is_float32(monkeypatch):
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: True)
    torch.manual_seed(2)
    grad = torch.randn(8, 20)
    forced, optimizer = first_step(grad, ns_dtype="float32")
    assert optimizer.ns_dtype_on(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: False)
    assert torch.equal(forced, first_step(grad)[0])  # auto on a slow device: the same


def test_auto_is_decided_once_per_device_per_optimizer(monkeypatch):
    decided = []

    def auto(device):
        decided.append(device)
        return torch.float32

    monkeypatch.setattr(muon_module, "auto_ns_dtype", auto)
    params = [torch.nn.Parameter(torch.randn(4, 6)) for _ in range(3)]
    first, second = Muon(params[:2]), Muon(params[2:])
    for _ in range(3):
        for param in params:
            param.grad = torch.randn(4, 6)
        first.step()
        second.step()
    assert decided == [torch.device("cpu")] * 2  # one per optimizer, not per step or tensor
    Muon(params, ns_dtype="float32").step()
    assert len(decided) == 2  # an explicit value asks nothing


def test_a_bad_ns_dtype_is_one_error_naming_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"ns_dtype must be one of \('auto', 'bfloat16', "
                       r"'float32'\), got 'fp16'"):  # fmt: skip
        Muon([torch.nn.Parameter(torch.ones(2, 2))], ns_dtype="fp16")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4, bias=False))
    muon = {"class_path": "groupwise.optim.Muon", "init_args": {"ns_dtype": "half"}}
    rule = {"name": "w", "params": ["*"], "optimizer": muon}
    with pytest.raises(ParamGroupError, match=r"group 'w'.*ns_dtype must be one of.*'half'"):
        build_optimizer(net, [rule], torch.optim.SGD)


def test_the_dtype_is_no_state_and_survives_a_copy():
    optimizer = Muon([torch.nn.Parameter(torch.ones(3, 3))], ns_dtype="float32")
    state = optimizer.state_dict()
    assert "ns_dtype" not in state["param_groups"][0]
    assert copy.deepcopy(optimizer).ns_dtype == "float32"
    fresh = Muon([torch.nn.Parameter(torch.ones(3, 3))], ns_dtype="bfloat16")
    fresh.load_state_dict(state)
    assert fresh.ns_dtype == "bfloat16"  # the config's, not the checkpoint's


@pytest.mark.parametrize(
    ("fast", "ns_dtype", "label"),
    [
        (False, "auto", "Muon (ns float32)"),
        (True, "auto", "Muon (ns bfloat16)"),
        (True, "float32", "Muon (ns float32)"),
        (False, "bfloat16", "Muon (ns bfloat16)"),
    ],
)
def test_the_group_table_shows_the_chosen_dtype(monkeypatch, fast, ns_dtype, label):
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: fast)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    muon = {"class_path": "groupwise.optim.Muon", "init_args": {"ns_dtype": ns_dtype}}
    rules = [{"name": "filters", "params": ["0.weight"], "optimizer": muon}]
    rows = describe_optimizer(build_optimizer(net, rules, torch.optim.SGD))
    assert [(r["name"], r["optimizer"]) for r in rows] == [("filters", label), ("default", "SGD")]
    # Muon as the model's only optimizer: the same column
    (row,) = describe_optimizer(Muon([net[0].weight], ns_dtype=ns_dtype))
    assert row["optimizer"] == label


def test_a_fit_shows_the_dtype_and_resumes_under_another(monkeypatch, data_dir, tmp_path):
    """Through the CLI: the run's table (``param_groups.txt``) names the dtype chosen on
    the run's device, and a checkpoint trained in bfloat16 resumes with ``ns_dtype:
    float32`` in the config: the dtype is not among the settings a resume checks, and the
    saved groups carry none (so a resume on a machine that picks another dtype goes on)."""
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: True)
    first = run(["fit", "--config", write_config(tmp_path, **{"trainer.max_epochs": 1}),
                 *quick(data_dir, tmp_path)])  # fmt: skip
    run_dir = Path(first.trainer.log_dir)
    assert "filters  Muon (ns bfloat16)" in (run_dir / "param_groups.txt").read_text()
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert all("ns_dtype" not in g for g in load(ckpt)["optimizer_states"][0]["param_groups"])

    changes = {"trainer.max_epochs": 2, "model.param_groups.0.optimizer.init_args.ns_dtype":
               "float32"}  # fmt: skip
    config = write_config(tmp_path, **changes)
    resumed = run(["fit", "--config", config, *quick(data_dir, tmp_path), "--ckpt_path",
                   str(ckpt)])  # fmt: skip
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 6
    table = (Path(resumed.trainer.log_dir) / "param_groups.txt").read_text()
    assert "filters  Muon (ns float32)" in table
    (muon,) = [c for c in resumed.trainer.optimizers[0].optimizers if isinstance(c, Muon)]
    assert muon.ns_dtype_on(torch.device("cpu")) == torch.float32
