"""ConfusionMatrix: the image of a real run's validation, its counts, and the figure
torchmetrics draws of them."""

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import LENET, quick, scalars
from fake_cifar import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.classification import MulticlassConfusionMatrix

from groupwise.callbacks.confusion_matrix import ConfusionMatrix, figure
from groupwise.cli import run


def test_fit_logs_the_matrix_of_every_validation(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2")
    cli = run(["fit", "--config", LENET, *args])  # ConfusionMatrix is a default callback
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, ConfusionMatrix)]
    matrix = callback.last_matrix
    assert matrix.shape == (10, 10)
    assert int(matrix.sum()) == 20  # the 20 validation images, sanity check not counted
    assert (
        matrix.sum(dim=1).tolist()
        == np.bincount([int(y) for _, y in cli.datamodule.val_set], minlength=10).tolist()
    )  # rows are the true classes
    # The diagonal is what val/acc counts: the recomputed logits are the validation ones.
    run_dir = Path(cli.trainer.log_dir)
    accuracy = scalars(run_dir)["val/acc"][-1][1]
    assert int(matrix.trace()) / 20 == pytest.approx(accuracy)

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["val/confusion_matrix"]
    images = events.Images("val/confusion_matrix")
    assert [image.step for image in images] == [3, 6]  # after each epoch's 3 steps
    # 10 classes at 0.8 inch each, 100 dpi
    assert (images[-1].width, images[-1].height) == (800, 800)


def test_figure_writes_each_count_in_its_cell_with_the_class_names():
    matrix = torch.tensor([[3, 1, 0], [0, 4, 2], [5, 0, 7]])  # rows: true, columns: predicted
    names = ["cat", "dog", "frog"]
    fig = figure(MulticlassConfusionMatrix(3), matrix, names)
    (axes,) = fig.axes[:1]
    cells = {(text.get_position(), text.get_text()) for text in axes.texts}
    counts = {((col, row), str(int(matrix[row, col]))) for row in range(3) for col in range(3)}
    assert cells == counts
    assert [label.get_text() for label in axes.get_xticklabels()] == names  # predicted
    assert [label.get_text() for label in axes.get_yticklabels()] == names  # true
    assert axes.get_xlabel() == "Predicted class" and axes.get_ylabel() == "True class"
    assert tuple(fig.get_size_inches()) == (6.4, 6.4)  # at least matplotlib's default width
    image = np.asarray(axes.images[0].get_array())
    assert image.tolist() == matrix.tolist()  # the colours are the counts


def test_class_names_must_match_the_classes():
    callback = ConfusionMatrix(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"2 class names for 3 classes"):
        callback.setup(None, None, "fit")
