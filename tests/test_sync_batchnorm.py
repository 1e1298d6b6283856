"""``--trainer.sync_batchnorm true``: batch-norm statistics over the global batch under DDP.

torch runs ``SyncBatchNorm`` on GPUs only (CUDA, XPU), so on CPU ranks the option is an
error before any process starts, and the test that 2 ranks then match 1 process runs only
where there are 2 GPUs. Without it each rank normalises its own batch (``test_ddp.py``).
"""

import pytest
import torch
from cli_run import ROOT, groupwise, load, quick, scalars
from fake_cifar import write_image_folder

FAST = str(ROOT / "configs" / "fast.yaml")
TINY = ["--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.stem_width", "8"]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
SYNC = ["--trainer.sync_batchnorm", "true"]


def test_sync_batchnorm_on_cpu_ranks_is_an_error_before_any_process_starts(data_dir, tmp_path):
    # in a subprocess: a DDP fit in this process would start the second rank as a new pytest
    done = groupwise("fit", "--config", FAST, *quick(data_dir, tmp_path, *DDP, *SYNC))
    assert done.returncode != 0
    assert (
        "trainer.sync_batchnorm=true needs GPUs: torch's SyncBatchNorm runs on CUDA and XPU"
        " devices only, and this run has 2 CPU processes." in done.stderr
    )
    assert "SyncBatchNorm layers only work with GPU modules" not in done.stderr
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm needs 2 GPUs")
def test_sync_batchnorm_two_gpus_match_one(tmp_path):
    """With ``--trainer.sync_batchnorm true`` the batch-norm statistics are those of the
    global batch, so 2 GPUs x 10 images train as 1 GPU x 20. Stated tolerance: every weight
    and batch-norm buffer within atol 1e-4 + rtol 1e-3, validation accuracy within one of
    the 20 images."""
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    gpu = ["--trainer.accelerator", "gpu"]
    epochs = [*TINY, "--trainer.max_epochs", "3", *gpu]
    one = [*epochs, "--trainer.devices", "1", "--data.batch_size", "20"]
    two = [*epochs, *DDP, "--data.batch_size", "10", *SYNC]
    lasts, accuracy = [], []
    for name, extra in (("one", one), ("two", two)):
        root = tmp_path / name
        done = groupwise("fit", "--config", FAST, *quick(data_dir, root, *extra))
        assert done.returncode == 0, done.stderr[-4000:]
        lasts.append(load(root / "lightning_logs/version_0/checkpoints/last.ckpt"))
        accuracy.append(scalars(root / "lightning_logs/version_0")["val/acc"][-1][1])
    for key, value in lasts[0]["state_dict"].items():
        if value.is_floating_point():
            torch.testing.assert_close(lasts[1]["state_dict"][key], value, atol=1e-4, rtol=1e-3)
    assert abs(accuracy[0] - accuracy[1]) <= 1 / 20
