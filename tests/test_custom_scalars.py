"""CustomScalars: the Custom Scalars layout a real run writes, read back from its events."""

import re
from pathlib import Path

from cli_run import LENET, quick, scalars
from fake_cifar import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from groupwise.cli import run


def read_layout(run_dir: Path) -> dict[str, dict[str, list[str]]]:
    """The run's custom-scalars layout as {category: {chart: [tag regexes]}}, as
    TensorBoard's Custom Scalars plugin reads it (the ``custom_scalars__config__`` tensor)."""
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    (event,) = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    return {
        category.title: {chart.title: list(chart.multiline.tag) for chart in category.chart}
        for category in layout.category
    }


def test_fit_writes_one_chart_per_quantity_with_a_line_per_group(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1", "--model.no_decay_split", "true")
    cli = run(["fit", "--config", LENET, *args, "--group_stats.every_n_steps", "1"])
    run_dir = Path(cli.trainer.log_dir)
    groups = ["features", "features.no_decay", "classifier", "classifier.no_decay"]

    def chart(pattern: str) -> list[str]:
        return [re.escape(pattern.format(group)) + "$" for group in groups]

    assert read_layout(run_dir) == {
        "parameter groups": {
            "learning rate": chart("lr-SGD/{}"),
            "gradient norm": chart("groups/{}/grad_norm"),
            "parameter norm": chart("groups/{}/param_norm"),
            "update ratio": chart("groups/{}/update_ratio"),
        }
    }
    # Each line is a tag the run logged, and draws only that tag (TensorBoard's re.match).
    logged = set(scalars(run_dir))
    for regexes in read_layout(run_dir)["parameter groups"].values():
        for regex in regexes:
            assert [tag for tag in logged if re.match(regex, tag)] == [regex[:-1].replace("\\", "")]
