"""Layer-wise lr decay as one rule: each listed module its own named group at the rule's lr
x decay ** (depth from the top), on torchvision's resnet18, a ViT-like net whose blocks
are in a ModuleList, and LeNet-5 through the CLI (TensorBoard, FreezeGroups, resume)."""

import json

import pytest
import torch
import torchvision
from cli_run import LENET, f32, quick, scalars
from torch import nn

from groupwise.checkpoint.io import CheckpointError
from groupwise.classifier import Classifier
from groupwise.cli import run
from groupwise.optim.param_groups import ParamGroupError, build_param_groups

SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def by_name(groups: list[dict]) -> dict[str, dict]:
    return {group["name"]: group for group in groups}


def members(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def under(model: nn.Module, prefix: str) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.startswith(prefix + ".")}


def test_resnet18_layers_at_decaying_lrs_the_stem_below_them_and_the_head_at_10x():
    net = torchvision.models.resnet18(num_classes=10)
    rules = [
        {"name": "backbone", "modules": ["layer1", "layer2", "layer3", "layer4"],
         "layer_decay": 0.7},
        {"name": "head", "modules": ["fc"], "lr_scale": 10.0},
    ]  # fmt: skip
    # through the Classifier's build_optimizer, which configure_optimizers calls in fit
    optimizer = Classifier(net, param_groups=rules, optimizer=sgd).build_optimizer()
    groups = by_name(optimizer.param_groups)
    # conv1 and bn1, registered before layer1, are the part below it (issue 26.3: they were
    # in `default` at the full 0.1, above every decayed layer)
    assert list(groups) == [
        "backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3",
        "backbone.layer4", "head",
    ]  # fmt: skip
    assert groups["backbone.stem"]["lr"] == 0.1 * 0.7**5
    assert groups["backbone.layer4"]["lr"] == 0.1 * 0.7
    assert groups["backbone.layer3"]["lr"] == 0.1 * 0.7**2
    assert groups["backbone.layer2"]["lr"] == 0.1 * 0.7**3
    assert groups["backbone.layer1"]["lr"] == 0.1 * 0.7**4
    assert groups["head"]["lr"] == 1.0
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        assert members(net, groups[f"backbone.{layer}"]) == under(net, layer)
        assert groups[f"backbone.{layer}"]["momentum"] == 0.9
    assert members(net, groups["backbone.stem"]) == {"conv1.weight", "bn1.weight", "bn1.bias"}
    lrs = [group["lr"] for group in optimizer.param_groups[:5]]
    assert lrs == sorted(lrs)  # from the input side up


def sgd(params):
    return torch.optim.SGD(params, **SGD)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        y = self.norm(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(x)


class TinyViT(nn.Module):
    """Patch embedding, a ModuleList of blocks, a final norm and a linear head."""

    def __init__(self, dim: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 8, stride=8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, dim))
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def test_vit_blocks_star_expands_to_every_block_in_order_with_no_decay_halves():
    net = TinyViT()
    rules = [
        {"name": "vit", "modules": ["patch_embed", "blocks.*"], "layer_decay": 0.75, "lr": 0.02},
        {"name": "head", "modules": ["norm", "head"]},
    ]
    groups = by_name(build_param_groups(net, rules, SGD, no_decay_split=True))
    parts = ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    expected = [f"vit.{p}{half}" for p in parts for half in ("", ".no_decay")]
    # pos_embed, a parameter of the net itself, is registered before patch_embed: the stem
    assert list(groups) == ["vit.stem", *expected, "head", "head.no_decay"]
    assert groups["vit.stem"]["lr"] == 0.02 * 0.75**6
    for depth, part in zip([5, 4, 3, 2, 1], parts, strict=True):
        lr = 0.02 * 0.75**depth  # the rule's own lr, decayed
        assert groups[f"vit.{part}"]["lr"] == lr
        assert groups[f"vit.{part}.no_decay"]["lr"] == lr
        assert groups[f"vit.{part}.no_decay"]["weight_decay"] == 0.0
        assert "weight_decay" not in groups[f"vit.{part}"]  # the optimizer's 5e-4
        assert members(net, groups[f"vit.{part}"]) | members(
            net, groups[f"vit.{part}.no_decay"]
        ) == under(net, part)
    assert members(net, groups["vit.stem"]) == {"pos_embed"}


def test_the_stem_holds_only_what_no_other_rule_takes_and_the_rule_s_patterns():
    net = torchvision.models.resnet18(num_classes=10)
    layers = ["layer1", "layer2", "layer3", "layer4"]
    rules = [
        {"name": "backbone", "modules": layers, "layer_decay": 0.5, "params": ["*.weight"]},
        {"name": "stem_conv", "modules": ["conv1"], "lr": 0.003},  # a later rule wins
    ]
    groups = by_name(build_param_groups(net, rules, SGD))
    assert members(net, groups["stem_conv"]) == {"conv1.weight"}
    assert members(net, groups["backbone.stem"]) == {"bn1.weight"}  # bn1.bias: not *.weight
    assert groups["backbone.stem"]["lr"] == 0.1 * 0.5**5
    assert "bn1.bias" in members(net, groups["default"])
    # the stem listed as the first module: nothing below it, no stem part
    listed = [{"name": "backbone", "modules": ["conv1", "bn1", *layers], "layer_decay": 0.5}]
    groups = by_name(build_param_groups(net, listed, SGD))
    assert "backbone.stem" not in groups and groups["backbone.conv1"]["lr"] == 0.1 * 0.5**6


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"layer_decay": 1.5}, r"layer_decay must be a number in \(0, 1\].*got 1.5"),
        ({"layer_decay": 0}, r"layer_decay must be a number in \(0, 1\].*got 0"),
        ({"layer_decay": 0.5, "modules": [], "params": ["*"]}, "it needs 'modules'"),
        ({"layer_decay": 0.5, "modules": ["stages.*"]}, "unknown module 'stages' in 'stages.*'"),
        ({"layer_decay": 0.5, "modules": ["norm.*"]}, "'norm.*' has no child module"),
        ({"layer_decay": 0.5, "lr": 0.1, "lr_scale": 2.0}, "sets both 'lr' and 'lr_scale'"),
        ({"layer_decay": 0.5, "modules": ["blocks.9"]}, "unknown module 'blocks.9'"),
    ],
)
def test_bad_layer_decay_rules_are_clear_errors(rule, message):
    rule = {"name": "vit", "modules": ["blocks.*"], **rule}
    with pytest.raises(ParamGroupError, match=message):
        build_param_groups(TinyViT(), [rule], SGD)


# ---- through the CLI: LeNet-5's two convolutions as two depths -----------------------------

DECAYED = [
    {"name": "features", "modules": ["features.*"], "layer_decay": 0.5},
    {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0},
]
GROUPS = f"--model.param_groups={json.dumps(DECAYED)}"


def test_each_part_has_its_lr_in_tensorboard_and_freezing_the_rule_freezes_every_part(
    data_dir, tmp_path
):
    freeze = {"class_path": "groupwise.callbacks.FreezeGroups", "init_args": {"frozen":
              {"features": 1}}}  # fmt: skip
    spy = '--trainer.callbacks+={"class_path": "fault_injection.RecordWeights"}'
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2", GROUPS, spy,
                 f"--trainer.callbacks+={json.dumps(freeze)}")  # fmt: skip
    fit = run(["fit", "--config", LENET, *args, "--model.scheduler.init_args.milestones", "[1]"])
    tags = scalars(tmp_path / "lightning_logs/version_0")
    # features.0 (the first conv) 2 layers from the top, features.3 one; x0.1 at epoch 1
    assert tags["lr-SGD/features.features.0"] == [(0, f32([0.00125])[0]), (3, f32([0.000125])[0])]
    assert tags["lr-SGD/features.features.3"] == [(0, f32([0.0025])[0]), (3, f32([0.00025])[0])]
    assert tags["lr-SGD/classifier"] == [(0, f32([0.05])[0]), (3, f32([0.005])[0])]
    # FreezeGroups({features: 1}): both parts unchanged through epoch 0, trained in epoch 1
    (recorder,) = [c for c in fit.trainer.callbacks if type(c).__name__ == "RecordWeights"]
    first, third, last = recorder.after_step[0], recorder.after_step[2], recorder.after_step[-1]
    for key in ("net.features.0.weight", "net.features.3.weight"):
        assert torch.equal(first[key], third[key]) and not torch.equal(third[key], last[key])
    assert not torch.equal(first["net.classifier.1.weight"], third["net.classifier.1.weight"])


def test_resume_checks_the_expanded_groups(data_dir, tmp_path):
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1", GROUPS)
    run(["fit", "--config", LENET, *args])
    again = quick(data_dir, tmp_path, "--trainer.max_epochs", "2")  # the shipped groups
    # by path: --ckpt_path last takes only a run of the same config (other groups: a new run)
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"groups removed: \['features.features.0'"):
        run(["fit", "--config", LENET, *again, "--ckpt_path", str(last)])
    resumed = run(["fit", "--config", LENET, *args[:-3], "--trainer.max_epochs", "2", GROUPS,
                   "--ckpt_path", "last"])  # fmt: skip
    assert resumed.trainer.global_step == 6


def test_a_layer_between_listed_ones_is_an_error_unless_a_rule_takes_it():
    """resnet18 with layer2 left out of the list: its parameters would train in `default`
    at the full lr, between layers at 0.1 * 0.7**k (a silent inversion, like the stem's);
    the rule must name them, or another rule take them."""
    net = torchvision.models.resnet18(num_classes=10)
    rules = [{"name": "backbone", "modules": ["layer1", "layer3", "layer4"], "layer_decay": 0.7}]
    with pytest.raises(ParamGroupError) as caught:
        build_param_groups(net, rules, SGD)
    message = str(caught.value)
    assert "'backbone'" in message and "layer2.0.conv1.weight" in message
    assert "between 'layer1' and 'layer3'" in message
    taken = [{"name": "middle", "modules": ["layer2"], "lr": 0.01}, *rules]
    groups = by_name(build_param_groups(net, taken, SGD))
    assert members(net, groups["middle"]) == under(net, "layer2")
    assert "default" not in groups or not members(net, groups["default"]) & under(net, "layer2")
