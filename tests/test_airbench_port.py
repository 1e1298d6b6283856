"""scripts/airbench94_cpu.py, the CPU port of airbench94_muon.py: it trains on a fabricated
image folder and writes its record, holds out exactly the DataModule's validation images, and
counts the FLOPs its docstring says it counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_cifar import write_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from script_module import script_module

from groupwise.data.cifar10 import CIFAR10DataModule, seeded_permutation

port = script_module("airbench94_cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """80 training images (8 per class), PNG."""
    return write_image_folder(tmp_path_factory.mktemp("port_cifar"), n_per_class=8)


def test_two_steps_on_fabricated_data_print_the_table_and_write_the_record(
    folder, tmp_path, capsys
):
    out = tmp_path / "record.json"
    argv = ["--data-dir", str(folder), "--val-size", "20", "--batch-size", "20"]
    argv += ["--limit-steps", "2", "--seed", "3", "--out", str(out)]
    record = port.main(argv)

    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    # 60 training images in batches of 20: 3 steps an epoch, 24 in 8 epochs, the whitening
    # bias trained for 3 epochs (9 steps); stopped after 2, inside epoch 0
    assert record["n_train"] == 60 and record["val_size"] == 20
    assert (record["steps"], record["total_train_steps"], record["whiten_bias_train_steps"]) == (
        2,
        24,
        9,
    )
    assert len(record["epoch_seconds"]) == 1 and len(record["val_acc_per_epoch"]) == 1
    assert record["time_seconds"] == pytest.approx(
        record["whiten_seconds"] + sum(record["epoch_seconds"]) + record["tta_seconds"]
    )
    # the wall time adds the per-epoch evaluation airbench leaves out of its time
    assert len(record["eval_seconds"]) == 1
    assert record["wall_seconds"] >= record["time_seconds"] + record["eval_seconds"][0]
    for acc in (record["acc"], record["tta_acc"]):
        assert 0 <= acc <= 1 and (acc * 20) == pytest.approx(round(acc * 20))  # k of 20 images
    assert record["seed"] == 3 and record["split_seed"] == 0
    expected_dtype = "bfloat16" if port.fast_bfloat16(torch.device("cpu")) else "float32"
    assert record["ns_dtype"] == expected_dtype
    assert record["machine"]["torch"] == torch.__version__
    assert record["machine"]["torch_cpu_capability"] in record["machine_line"]

    printed = capsys.readouterr().out
    assert "|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |" in (
        printed
    )
    assert "|      eval  |" in printed.replace("|          |   eval  |", "|      eval  |")
    assert f"record: {out}" in printed


def test_the_same_seed_gives_the_same_accuracies(folder):
    """One run per process, seeded: two runs with one seed give the same accuracies."""
    argv = ["--data-dir", str(folder), "--val-size", "20", "--batch-size", "20", "--epochs", "1"]
    first = port.main([*argv, "--out", "/dev/null"])
    second = port.main([*argv, "--out", "/dev/null"])
    assert first["val_acc_per_epoch"] == second["val_acc_per_epoch"]
    assert first["tta_acc"] == second["tta_acc"]


@settings(max_examples=8, deadline=None)
@given(val_size=st.integers(1, 79), split_seed=st.integers(0, 2**31 - 1))
def test_the_held_out_images_are_the_datamodules(folder, val_size, split_seed):
    """The port evaluates on the DataModule's validation images, in its order, and trains on
    exactly its training images (kept in the split permutation's order)."""
    train_images, train_labels, val_images, val_labels = port.load_data(
        folder, val_size, split_seed
    )
    dm = CIFAR10DataModule(str(folder), download=False, val_size=val_size, seed=split_seed)
    dm.setup("fit")
    assert torch.equal(val_images, dm.val_set.tensors[0])
    assert torch.equal(val_labels, dm.val_set.tensors[1])
    train_idx, val_idx = port.split_indices(80, val_size, split_seed)
    assert torch.equal(val_idx, dm.val_indices)
    order = train_idx.argsort()  # the DataModule keeps its training indices sorted
    assert torch.equal(train_idx[order], dm.train_indices)
    assert torch.equal(train_images[order], dm.train_set.tensors[0])
    assert torch.equal(train_labels[order], dm.train_set.tensors[1])
    # the whitening's images (the first ones) are the DataModule's train_sample: the first of
    # seeded_permutation(training images, data.seed) over its sorted training images
    sample = seeded_permutation(80 - val_size, split_seed)[:5000]
    count = len(sample)
    assert torch.equal(train_images[:count], dm.train_set.tensors[0][sample])


def test_a_val_size_out_of_range_is_one_clear_error(folder):
    from groupwise.errors import ConfigError

    with pytest.raises(ConfigError, match=r"val_size must be in \[0, 80\) .* got 80"):
        port.load_data(folder, 80, 0)


def test_newton_schulz_leaves_its_input_alone():
    """In float32 ``G.to(dtype)`` would be ``G`` itself, and the in-place normalisation would
    scale the momentum buffer (the original copies: float16 to bfloat16)."""
    g = torch.randn(8, 18)
    before = g.clone()
    port.zeropower_via_newtonschulz5(g, dtype=torch.float32)
    assert torch.equal(g, before)


def conv_flops(c_in: int, c_out: int, k: int, side: int) -> int:
    """2 * multiply-adds of a k x k convolution with a side x side output."""
    return 2 * c_out * c_in * k * k * side * side


def test_the_flop_count_is_the_convolutions_and_matmuls_by_hand():
    """Forward per image: whitening 2x2 (3 -> 24) on 31x31, the three conv groups (after
    each group's first conv a 2x2 pool: 31 -> 15 -> 7 -> 3), the head. Backward: the input
    and weight gradients of every conv and of the head, but none of the whitening conv
    (frozen weight, image input), and the first group's first conv's input gradient only
    while the whitening bias trains."""
    convs = [(24, 64, 31), (64, 64, 15), (64, 256, 15), (256, 256, 7), (256, 256, 7), (256, 256, 3)]
    head = 2 * 256 * 10
    forward = conv_flops(3, 24, 2, 31) + sum(conv_flops(i, o, 3, s) for i, o, s in convs) + head
    weight_grads = sum(conv_flops(i, o, 3, s) for i, o, s in convs) + head
    input_grads = sum(conv_flops(i, o, 3, s) for i, o, s in convs[1:]) + head
    first_input_grad = conv_flops(*convs[0][:2], 3, convs[0][2])

    batch, n_train, epochs = 2, 4, 4  # 2 steps an epoch, 8 steps, the whitening bias's 6
    parts = port.count_flops(n_train=n_train, n_eval=6, batch_size=batch, epochs=epochs)
    step = batch * (forward + weight_grads + input_grads)
    assert parts["train forward+backward"] == 8 * step + 6 * batch * first_input_grad
    assert parts["per-epoch evaluation"] == epochs * 6 * forward
    assert parts["final TTA evaluation (6 views)"] == 6 * 6 * forward
    # the patch covariance of the whitening: (4 images x 31 x 31 patches) x 12 x 12
    assert parts["whitening init"] == 2 * 4 * 31 * 31 * 12 * 12
    # Newton-Schulz: per filter (m x n, m <= n after the transpose), 3 x (X X^T, A A, B X)
    shapes = [(o, i * 9) for i, o, _ in convs]
    per_step = sum(3 * (2 * m * m * n + 2 * m * m * m + 2 * m * m * n) for m, n in shapes)
    assert parts["Muon Newton-Schulz"] == 8 * per_step


def test_bad_sizes_are_one_clear_error_each(folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        port.main(["--data-dir", str(folder), "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "error: --batch-size must be >= 1, got 0" in capsys.readouterr().err

    from groupwise.errors import ConfigError

    with pytest.raises(ConfigError, match="batch size 2000 is larger than the 60 training images"):
        port.main(["--data-dir", str(folder), "--val-size", "20", "--out", "/dev/null"])
