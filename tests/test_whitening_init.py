"""groupwise.callbacks.WhiteningInit through `groupwise fit` of configs/airbench94.yaml (a
narrow AirbenchNet, the fabricated data): the filters equal airbench94's ``init_whiten`` of
the DataModule's sample, computed directly here; they are in every checkpoint with the
callback's record; a resume does not recompute them; no default init overwrites them or
the net's dirac and head inits; a bad module is one message before anything is written;
under DDP (2 gloo ranks) rank 0 computes and every rank holds its filters."""

from __future__ import annotations

import json
import re

import pytest
import torch
from airbench_recipe import TINY, recipe_config
from cli_run import groupwise, load, quick
from torchvision.transforms import v2

from groupwise.callbacks import WhiteningInit
from groupwise.cli import run
from groupwise.data import CIFAR10DataModule
from groupwise.data.batch_augment import normalize
from groupwise.data.cifar10_files import load_split
from groupwise.errors import ConfigError
from groupwise.nets import AirbenchNet

COUNTING = "airbench_recipe.CountingWhiteningInit"


def airbench_init_whiten(train_images: torch.Tensor, eps: float = 5e-4) -> torch.Tensor:
    """airbench94_muon.py's ``CifarNet.init_whiten`` (L247-L254), for a 2x2 whitening conv."""
    c, (h, w) = train_images.shape[1], (2, 2)
    patches = train_images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    patches_flat = patches.float().view(len(patches), -1)
    est_patch_covariance = (patches_flat.T @ patches_flat) / len(patches_flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
    eigenvectors_scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(
        eigenvalues.view(-1, 1, 1, 1) + eps
    )
    return torch.cat((eigenvectors_scaled, -eigenvectors_scaled))


def sample_of(data_dir, count: int, val_size: int = 20) -> torch.Tensor:
    """The first ``count`` images after the ``val_size`` held out in ``randperm`` seeded
    with data.seed (0) over the files' training split, normalised: what the DataModule
    documents as its ``train_sample`` (and the CPU port of the script whitens with)."""
    split = load_split(data_dir, "train", cache=False)
    perm = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(0))
    return normalize(split.images[perm[val_size : val_size + count]])


def record(out) -> str:
    spec = {"class_path": "airbench_recipe.RecordStart", "init_args": {"out": str(out)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.fixture(scope="module")
def first(data_dir, tmp_path_factory) -> dict:
    """A 2-epoch run (3 steps of 20 each) stopped after its first epoch, then resumed from
    its last.ckpt."""
    root = tmp_path_factory.mktemp("whitening")
    config = recipe_config(root / "airbench.yaml", whitening=COUNTING)
    args = ["fit", "--config", str(config), *quick(data_dir, root, *TINY)]
    args += ["--trainer.max_epochs", "2"]
    stop = '--trainer.callbacks+={"class_path": "airbench_recipe.StopAfterEpoch"}'
    fit = run([*args, record(root / "start"), stop])
    last = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = load(last)
    resumed = run([*args, "--ckpt_path", str(last)])
    return {
        "fit": fit,
        "saved": saved,
        "start": load(root / "start" / "start-rank0.pt"),
        "resumed": resumed,
        "resumed_last": load(root / "lightning_logs/version_1/checkpoints/last.ckpt"),
    }


def whitening(fit):
    (callback,) = [c for c in fit.trainer.callbacks if type(c).__name__ == "CountingWhiteningInit"]
    return callback


def test_the_filters_are_airbenchs_init_whiten_of_the_datamodules_sample(first):
    fit = first["fit"]
    expected = airbench_init_whiten(sample_of(fit.datamodule.data_dir, 30))
    assert expected.shape == (24, 3, 2, 2)
    weight = fit.model.net.whiten.weight
    torch.testing.assert_close(weight, expected, rtol=0, atol=0)
    assert not weight.requires_grad  # frozen: trained by nothing, so still as set
    assert whitening(fit).calls == 1
    assert first["saved"]["global_step"] == 3  # stopped after its first epoch


def test_no_default_init_overwrites_the_nets_own_inits(first):
    """As training starts (after every callback's setup and fit start), the convs are still
    dirac on their first channels, the head at std 1, the whitening filters as set."""
    start = first["start"]["state_dict"]
    torch.testing.assert_close(start["whiten.weight"], first["fit"].model.net.whiten.weight)
    conv = start["layers.1.conv1.weight"]  # 24 -> 8 channels
    dirac = torch.zeros(8, 24, 3, 3)
    dirac[range(8), range(8), 1, 1] = 1
    assert torch.equal(conv, dirac)
    assert start["head.weight"].std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(start["layers.1.norm1.weight"], torch.ones(8))


def test_the_checkpoint_holds_the_filters_and_the_callbacks_record(first):
    saved = first["saved"]
    torch.testing.assert_close(
        saved["state_dict"]["net.whiten.weight"], first["fit"].model.net.whiten.weight
    )
    (state,) = [v for k, v in saved["callbacks"].items() if k.startswith("CountingWhiteningInit")]
    assert state == {"computed": True, "module": "whiten", "images": 30, "eps": 5e-4}


def test_a_resume_restores_the_filters_and_does_not_recompute_them(first):
    resumed = first["resumed"]
    assert whitening(resumed).calls == 0
    assert whitening(resumed).computed  # as the checkpoint records
    torch.testing.assert_close(
        resumed.model.net.whiten.weight, first["saved"]["state_dict"]["net.whiten.weight"]
    )
    assert first["resumed_last"]["global_step"] == 6  # it did train on: 2 epochs of 3 steps


def test_a_bad_module_is_one_message_and_no_run_directory(data_dir, tmp_path):
    config = recipe_config(tmp_path / "airbench.yaml")
    text = config.read_text().replace("module: whiten", "module: whitten")
    config.write_text(text)
    done = groupwise("fit", "--config", str(config), *quick(data_dir, tmp_path, *TINY))
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: WhiteningInit: the net has no module 'whitten' (did you mean 'whiten'?)"
        )
    )
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            "layers.1.conv1",
            "module 'layers.1.conv1' has 8 filters (groups 1); whitening its 3x3 patches of"
            " 24 channels takes 432 (each eigenvector and its negative), groups 1",
        ),
        ("head", "module 'head' is a Linear, not an nn.Conv2d"),
    ],
)
def test_a_module_whitening_filters_do_not_fit_is_an_error(module, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        WhiteningInit(module=module).check_net(AirbenchNet(widths=(8, 16, 16)))


@pytest.mark.slow
def test_under_ddp_rank_0_computes_and_every_rank_holds_its_filters(data_dir, tmp_path):
    """Rank 1's training images are mirrored before the init: filters computed there would
    differ. Both ranks start training with rank 0's, computed once, on rank 0."""
    config = recipe_config(tmp_path / "airbench.yaml", whitening=COUNTING)
    text = config.read_text().replace("module: whiten", f"module: whiten\n      out: {tmp_path}")
    config.write_text(text)
    spec = {
        "class_path": "airbench_recipe.RecordStart",
        "init_args": {"out": str(tmp_path / "start"), "mirror_rank": 1},
    }
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--data.batch_size", "10"]
    args = quick(data_dir, tmp_path, *TINY, *ddp, "--trainer.max_epochs", "1")
    done = groupwise(
        "fit", "--config", str(config), *args, f"--trainer.callbacks+={json.dumps(spec)}"
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (load(tmp_path / "start" / f"start-rank{r}.pt") for r in (0, 1))
    assert not torch.equal(rank0["sample"], rank1["sample"])  # rank 1's images differ
    expected = airbench_init_whiten(rank0["sample"])
    for rank in (rank0, rank1):
        torch.testing.assert_close(rank["state_dict"]["whiten.weight"], expected, rtol=0, atol=0)
    calls = [(tmp_path / f"calls-rank{r}.txt").read_text() for r in (0, 1)]
    assert calls == ["1", "0"]


def test_train_sample_is_a_seeded_uniform_sample_and_refuses_what_it_cannot_give(data_dir):
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False, val_size=20)
    dm.setup("fit")
    sample = dm.train_sample(60)
    assert sample.dtype == torch.float32 and sample.shape == (60, 3, 32, 32)
    torch.testing.assert_close(sample, sample_of(data_dir, 60), rtol=0, atol=0)
    # not the first files, which come class by class (the first 6 training images: class 0)
    assert set(dm.train_set.tensors[1][:6].tolist()) == {0}
    labels = load_split(data_dir, "train", cache=False).labels
    order = torch.randperm(80, generator=torch.Generator().manual_seed(0))
    assert len(set(labels[order[20:26]].tolist())) > 2
    with pytest.raises(
        ConfigError,
        match=r"asked for 61 training images; the training split has 60 \(data.val_size 20",
    ):
        dm.train_sample(61)
    per_sample = CIFAR10DataModule(
        data_dir=str(data_dir), download=False, val_size=20, train_transform=v2.Identity()
    )
    per_sample.setup("fit")
    with pytest.raises(ConfigError, match="needs the batched path"):
        per_sample.train_sample(10)
