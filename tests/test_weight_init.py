"""WeightInit: which modules each rule touches on LeNet-5 and the CIFAR ResNet-18, the values it
leaves, seeding, and what a real run does with it (fit, resume, validate, init_weights, DDP)."""

import json
from pathlib import Path

import pytest
import torch
from cli_run import LENET, groupwise, quick
from fault_injection import RecordTrainStart
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tied_net import TiedNet
from torch import nn

from groupwise.callbacks.weight_init import WeightInit
from groupwise.checkpoint.io import load_checkpoint_file
from groupwise.cli import run
from groupwise.nets import CifarResNet18, LeNet5

LENET_CONVS = ["features.0", "features.3"]
LENET_LINEARS = ["classifier.1", "classifier.3", "classifier.5"]
BLOCKS = [f"backbone.{stage}.{block}" for stage in (1, 2, 3, 4) for block in (0, 1)]
SHORTCUTS = [f"backbone.{stage}.0.shortcut" for stage in (2, 3, 4)]  # stride-2 stages
RESNET_CONVS = (
    ["backbone.0.0"]
    + [f"{block}.conv{i}" for block in BLOCKS for i in (1, 2)]
    + [f"{shortcut}.0" for shortcut in SHORTCUTS]
)
RESNET_NORMS = (
    ["backbone.0.1"]
    + [f"{block}.bn{i}" for block in BLOCKS for i in (1, 2)]
    + [f"{shortcut}.1" for shortcut in SHORTCUTS]
)


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def scrambled_resnet(width: int = 8) -> CifarResNet18:
    """A ResNet whose norm layers do not start at weight 1, bias 0 (so the norm rule shows)."""
    net = CifarResNet18(width=width)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return net


def test_lenet_rules_touch_exactly_the_convs_and_linears():
    net = LeNet5()
    touched = WeightInit(seed=0).apply(net)
    assert touched == {
        "conv": LENET_CONVS,
        "linear": LENET_LINEARS,
        "norm": [],
        "zero_last_norm": [],
    }
    modules = dict(net.named_modules())
    for name in LENET_CONVS + LENET_LINEARS:
        assert torch.count_nonzero(modules[name].bias) == 0, name
    # kaiming_normal, fan_out, relu: std sqrt(2 / (out_channels * k * k)) = sqrt(2 / 400)
    assert modules["features.3"].weight.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.1)
    # normal, std 0.01 (48,000 weights)
    assert modules["classifier.1"].weight.std().item() == pytest.approx(0.01, rel=0.03)
    assert modules["classifier.1"].weight.mean().item() == pytest.approx(0.0, abs=3e-4)


def test_xavier_uniform_linear_rule_and_rules_switched_off():
    net = LeNet5()
    before = state(net)
    touched = WeightInit(conv=None, linear="xavier_uniform", seed=0).apply(net)
    assert touched["conv"] == [] and touched["linear"] == LENET_LINEARS
    for key in ("features.0.weight", "features.0.bias", "features.3.weight"):
        assert torch.equal(net.state_dict()[key], before[key]), key
    weight = net.classifier[1].weight  # 120 x 400: bound sqrt(6 / (400 + 120))
    bound = (6 / 520) ** 0.5
    assert weight.abs().max().item() <= bound
    assert weight.abs().max().item() > 0.99 * bound


def test_resnet18_conv_rule_touches_the_20_convs_and_norms_are_reset():
    net = scrambled_resnet(width=64)
    touched = WeightInit(seed=0).apply(net)
    assert sorted(touched["conv"]) == sorted(RESNET_CONVS) and len(RESNET_CONVS) == 20
    assert sorted(touched["norm"]) == sorted(RESNET_NORMS) and len(RESNET_NORMS) == 20
    assert touched["linear"] == ["head.2"]
    assert touched["zero_last_norm"] == []
    modules = dict(net.named_modules())
    for name in RESNET_NORMS:
        assert torch.all(modules[name].weight == 1), name
        assert torch.all(modules[name].bias == 0), name
    # the last conv: 512 x 512 x 3 x 3, fan_out 512 * 9
    conv = modules["backbone.4.1.conv2"].weight
    assert conv.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.01)


def test_zero_last_norm_zeroes_every_bn2_and_no_other_norm():
    net = scrambled_resnet()
    touched = WeightInit(zero_last_norm_in_residual=True, seed=0).apply(net)
    assert touched["zero_last_norm"] == [f"{block}.bn2" for block in BLOCKS]
    for name, module in net.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            expected = 0.0 if name.endswith(".bn2") else 1.0
            assert torch.all(module.weight == expected), name
            assert torch.all(module.bias == 0), name
    # a block with its last norm at zero is the identity on its residual branch
    block = net.backbone[1][1].eval()
    x = torch.relu(torch.randn(2, 8, 32, 32))
    assert torch.equal(block(x), x)


def test_zero_last_norm_needs_a_residual_block():
    with pytest.raises(ValueError, match=r"found no module of the classes \['BasicBlock'"):
        WeightInit(zero_last_norm_in_residual=True).apply(LeNet5())
    touched = WeightInit(zero_last_norm_in_residual=True, residual_blocks=["BasicBlock"]).apply(
        CifarResNet18(width=8)
    )
    assert len(touched["zero_last_norm"]) == 8


def test_skip_leaves_the_stem_byte_identical():
    net = scrambled_resnet()
    before = state(net)
    touched = WeightInit(skip=["backbone.0*"], seed=0).apply(net)
    assert sorted(touched["conv"]) == sorted(RESNET_CONVS[1:])
    assert sorted(touched["norm"]) == sorted(RESNET_NORMS[1:])
    after = net.state_dict()
    stem = [key for key in before if key.startswith("backbone.0.")]
    assert stem == [
        "backbone.0.0.weight",
        "backbone.0.1.weight",
        "backbone.0.1.bias",
        "backbone.0.1.running_mean",
        "backbone.0.1.running_var",
        "backbone.0.1.num_batches_tracked",
    ]
    for key in stem:
        assert after[key].numpy().tobytes() == before[key].numpy().tobytes(), key
    assert not torch.equal(after["backbone.1.0.conv1.weight"], before["backbone.1.0.conv1.weight"])


def test_skip_a_parent_skips_its_children_and_an_unmatched_pattern_is_an_error():
    net = LeNet5()
    before = state(net)
    touched = WeightInit(skip=["features"], seed=0).apply(net)
    assert touched["conv"] == [] and touched["linear"] == LENET_LINEARS
    assert torch.equal(net.features[0].weight, before["features.0.weight"])
    with pytest.raises(ValueError, match=r"skip patterns \['backbone\*'\] match no module"):
        WeightInit(skip=["features", "backbone*"]).apply(LeNet5())


def test_skip_protects_a_weight_tied_to_a_module_it_does_not_skip():
    """TiedNet's ``head.weight`` is ``mix.weight``: skipping ``head`` keeps that tensor, which
    the linear rule would otherwise reach through ``mix``; ``mix``'s own bias is reset."""
    net = TiedNet()
    with torch.no_grad():
        net.mix.bias.fill_(0.5)
    before = state(net)
    touched = WeightInit(skip=["head"], seed=0).apply(net)
    assert torch.equal(net.head.weight, before["head.weight"])
    assert net.head.weight is net.mix.weight
    assert torch.equal(net.head.bias, before["head.bias"])
    assert torch.count_nonzero(net.mix.bias) == 0
    assert touched["linear"] == ["proj", "mix"]


def test_skip_names_a_module_registered_under_two_names_by_either():
    """A module shared by two attributes is one module with two names; skipping the second
    name (which ``named_modules()`` leaves out) keeps it."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    net.add_module("again", net[0])
    before = state(net)
    WeightInit(skip=["again"], seed=0).apply(net)
    assert torch.equal(net[0].weight, before["0.weight"])


def test_same_seed_same_weights_whatever_used_the_global_rng():
    nets = [LeNet5(), LeNet5()]
    torch.rand(1000)  # the second init starts from another global RNG state
    rng_before = torch.get_rng_state()
    WeightInit(seed=3).apply(nets[0])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left as it was
    torch.rand(17)
    WeightInit(seed=3).apply(nets[1])
    first, second = state(nets[0]), nets[1].state_dict()
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    other = LeNet5()
    WeightInit(seed=4).apply(other)
    assert not torch.equal(other.features[0].weight, first["features.0.weight"])


# ---- in a real run -------------------------------------------------------------------------


def weight_init_arg(**init_args) -> str:
    spec = {"class_path": "groupwise.callbacks.WeightInit", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


RECORD = f"--trainer.callbacks+={json.dumps({'class_path': 'fault_injection.RecordTrainStart'})}"


def callback(cli, kind: type) -> Callback:
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, kind)]
    return found


def expected_lenet(seed: int) -> dict[str, torch.Tensor]:
    """What WeightInit(seed) makes of a LeNet-5: every parameter is drawn or set by a rule."""
    net = LeNet5()
    WeightInit(seed=seed).apply(net)
    return {f"net.{k}": v for k, v in net.state_dict().items()}


def histograms(run_dir: Path) -> dict[str, int]:
    """Histogram tags of a TensorBoard run and how many values each first histogram holds."""
    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    events.Reload()
    return {
        tag: int(events.Histograms(tag)[0].histogram_value.num)
        for tag in events.Tags()["histograms"]
    }


@pytest.fixture(scope="module")
def first(data_dir, tmp_path_factory):
    """A one-epoch LeNet fit with WeightInit(seed=7)."""
    root = tmp_path_factory.mktemp("runs")
    args = quick(data_dir, root, "--trainer.max_epochs", "1", weight_init_arg(seed=7), RECORD)
    return run(["fit", "--config", LENET, *args]), root


def test_fit_starts_from_the_initialised_weights(first):
    cli, _ = first
    record = callback(cli, RecordTrainStart).record
    assert record["global_step"] == 0
    expected = expected_lenet(7)
    for key, value in expected.items():
        assert torch.equal(record["state_dict"][key], value), key
    torch.manual_seed(0)  # seed_everything: 0 in lenet.yaml; the net the run built
    constructed = LeNet5().state_dict()
    assert not torch.equal(
        record["state_dict"]["net.features.0.weight"], constructed["features.0.weight"]
    )
    init = callback(cli, WeightInit)
    assert init.report == {"conv": 2, "linear": 3, "norm": 0, "zero_last_norm": 0}
    assert cli.trainer.global_step == 3


def test_fit_logs_an_init_histogram_per_parameter_group(first):
    cli, _ = first
    # features: 6*3*5*5 + 6 + 16*6*5*5 + 16; classifier: 400*120 + 120 + 120*84 + 84 + 84*10 + 10
    assert histograms(Path(cli.trainer.log_dir)) == {
        "init/features": 2872,
        "init/classifier": 59134,
    }


def test_resume_keeps_the_checkpoint_weights(first, data_dir):
    _, root = first
    last = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = load_checkpoint_file(last)["state_dict"]
    args = quick(data_dir, root, "--trainer.max_epochs", "2", weight_init_arg(seed=123), RECORD)
    cli = run(["fit", "--config", LENET, *args, "--ckpt_path", str(last)])
    record = callback(cli, RecordTrainStart).record
    assert record["global_step"] == 3
    assert record["state_dict"].keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(record["state_dict"][key], value), key
    init = callback(cli, WeightInit)
    assert init.report == {} and not init.applied
    assert histograms(Path(cli.trainer.log_dir)) == {}


def test_init_weights_are_left_as_loaded(first, data_dir, tmp_path):
    _, root = first
    last = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = load_checkpoint_file(last)["state_dict"]
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1", weight_init_arg(seed=123), RECORD)
    cli = run(["fit", "--config", LENET, *args, "--model.init_weights", str(last)])
    record = callback(cli, RecordTrainStart).record
    for key, value in saved.items():
        assert torch.equal(record["state_dict"][key], value), key
    assert callback(cli, WeightInit).report == {}


def test_validate_with_a_checkpoint_is_untouched(first, data_dir, tmp_path):
    _, root = first
    last = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    saved = load_checkpoint_file(last)["state_dict"]
    args = quick(data_dir, tmp_path, weight_init_arg(seed=123))
    cli = run(["validate", "--config", LENET, *args, "--ckpt_path", str(last)])
    for key, value in cli.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert callback(cli, WeightInit).report == {}


# ---- DDP -----------------------------------------------------------------------------------


class ConsumeRng(Callback):
    """At setup, draw ``rank + 1`` times 100 numbers from the global RNG: the ranks' global
    RNGs differ when WeightInit (listed after this) runs."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        torch.rand(100 * (trainer.global_rank + 1))


class RecordSetup(Callback):
    """At setup (after the callbacks listed before it, before DDP wraps the model), save this
    rank's model weights to ``<out>/rank<r>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(state(pl_module), self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_get_identical_weights_before_ddp_wraps_the_model(data_dir, tmp_path):
    out = tmp_path / "ranks"
    consume = json.dumps({"class_path": "test_weight_init.ConsumeRng"})
    record = json.dumps(
        {"class_path": "test_weight_init.RecordSetup", "init_args": {"out": str(out)}}
    )
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "1",
        "--data.batch_size", "10",
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        f"--trainer.callbacks+={consume}",
        weight_init_arg(seed=7),
        f"--trainer.callbacks+={record}",
    )  # fmt: skip
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    expected = expected_lenet(7)
    assert rank0.keys() == rank1.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(rank0[key], value), key
        assert torch.equal(rank1[key], value), key
