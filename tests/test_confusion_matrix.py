"""ConfusionMatrix: the image of a real run's validation, and its counts."""

from pathlib import Path

import numpy as np
import pytest
from cli_run import LENET, quick, scalars
from fake_cifar import write_image_folder
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from groupwise.callbacks.confusion_matrix import ConfusionMatrix, draw
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
    assert images[-1].width > 100 and images[-1].height > 100


def test_draw_returns_an_rgb_image():
    image = draw(np.array([[3, 1], [0, 4]]), ["cat", "dog"])
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.min() < 100 < 200 < image.max()  # not blank


def test_class_names_must_match_the_classes():
    callback = ConfusionMatrix(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"2 class names for 3 classes"):
        callback.setup(None, None, "fit")
