"""GroupPlan: the group table of a real run, in param_groups.txt and as TensorBoard text."""

from pathlib import Path

from cli_run import LENET, quick
from fake_cifar import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from groupwise.callbacks.group_plan import markdown_table
from groupwise.cli import run
from groupwise.optim.param_groups import describe, format_table


def test_fit_saves_the_group_table_as_a_file_and_tensorboard_text(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1")
    cli = run(["fit", "--config", LENET, *args])  # GroupPlan is on in every fit
    optimizer = cli.trainer.optimizers[0]
    rows = describe(optimizer.param_groups, optimizer.defaults)
    run_dir = Path(cli.trainer.log_dir)
    assert (run_dir / "param_groups.txt").read_text() == format_table(rows) + "\n"
    assert [r["name"] for r in rows] == ["features", "classifier"]

    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    # Text summaries are tensor events; SummaryWriter.add_text appends "/text_summary".
    # (custom_scalars__config__ is CustomScalars' layout, tests/test_custom_scalars.py)
    assert events.Tags()["tensors"] == ["param_groups/text_summary", "custom_scalars__config__"]
    (event,) = events.Tensors("param_groups/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert text == markdown_table(rows)
    assert text.splitlines()[2].startswith("| features | 4 | 2,872 | 0.005 | 0.0005 | 0.9 |")
    assert event.step == 0


def test_markdown_table():
    rows = [{"name": "a", "lr": 0.1, "tensors": 1200}, {"name": "b", "lr": 1e-4, "tensors": 2}]
    assert markdown_table(rows) == (
        "| name | lr | tensors |\n| --- | --- | --- |\n| a | 0.1 | 1,200 |\n| b | 0.0001 | 2 |"
    )
    assert markdown_table([]) == "(no groups)"


def test_a_tied_weight_is_listed_once_with_both_names_and_trains_in_the_first_rule(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1")
    net = ["--model.net", "tied_net.TiedNet", "--model.param_groups"]
    rules = '[{"name": "head", "modules": ["head"], "lr_scale": 10.0}]'
    cli = run(["fit", "--config", LENET, *net, rules, *args])
    net = cli.model.net
    head, default = cli.trainer.optimizers[0].param_groups
    assert [id(p) for p in head["params"]] == [id(net.mix.weight), id(net.head.bias)]
    assert head["lr"] == 0.05
    assert [id(p) for p in default["params"]] == [
        id(p) for p in (*net.proj.parameters(), net.mix.bias)
    ]
    table = (Path(cli.trainer.log_dir) / "param_groups.txt").read_text().splitlines()
    assert table[0].split() == [
        "name",
        "tensors",
        "parameters",
        "lr",
        "weight_decay",
        "momentum",
        "tied",
    ]
    assert table[2].split() == [
        "head",
        "2",
        "110",
        "0.05",
        "0.0005",
        "0.9",
        "mix.weight",
        "=",
        "head.weight",
    ]
    assert table[3].split() == ["default", "3", "500", "0.005", "0.0005", "0.9"]
