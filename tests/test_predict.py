"""`groupwise predict`: the predictions file, read as a user reads it (issue 24, section 1).

A LeNet-5 trained for one epoch on the fabricated CIFAR-10 predicts the test split, a
folder tree of images, one image and the held-out images; each row of ``predictions.csv``
must be the image it names, in the input's order, with the class names of the data and the
probabilities the checkpoint's model gives that image (computed here from the files, read
with Pillow). The properties: which files a folder's listing takes, in what order; and the
rows of several DDP ranks, merged, in input order with each image once.
"""

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import LENET, groupwise, quick
from fake_cifar import CLASSES, fake_images, write_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from groupwise.callbacks.prediction_writer import in_input_order
from groupwise.classifier import Classifier
from groupwise.cli import run
from groupwise.data.batch_augment import CIFAR10_MEAN, CIFAR10_STD
from groupwise.data.cifar10_files import CIFAR10FileError, CIFAR10NotFoundError
from groupwise.data.predict_input import list_images
from groupwise.errors import ConfigError

QUICK = settings(max_examples=40, deadline=None, database=None)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def run_dirs(root: Path) -> list[Path]:
    logs = root / "lightning_logs"
    return sorted(logs.iterdir()) if logs.is_dir() else []


def expected_rows(checkpoint: str, files: list[Path], k: int = 3) -> list[list[tuple]]:
    """(class name, probability) of the ``k`` most probable classes of each image file, from
    the checkpoint's model on the file's pixels, normalised as for evaluation."""
    model = Classifier.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    with torch.no_grad():
        probabilities = model.predict_step(((images - mean) / std, None), 0)
    values, labels = probabilities.topk(k)
    return [
        [(CLASSES[y], p) for y, p in zip(row_y, row_p, strict=True)]
        for row_y, row_p in zip(labels.tolist(), values.tolist(), strict=True)
    ]


def top_classes(row: dict[str, str], k: int = 3) -> list[tuple]:
    names = ["predicted", *(f"class_{r}" for r in range(2, k + 1))]
    values = ["probability", *(f"probability_{r}" for r in range(2, k + 1))]
    return [(row[n], float(row[v])) for n, v in zip(names, values, strict=True)]


def assert_rows_match(rows: list[dict[str, str]], expected: list[list[tuple]]) -> None:
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected, strict=True):
        got = top_classes(row)
        assert [name for name, _ in got] == [name for name, _ in want], row
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=2e-6), row


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> dict:
    """A one-epoch fit on ``data_dir``: its root directory and last.ckpt."""
    root = tmp_path_factory.mktemp("fit")
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "1")])
    last = root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    return {"root": root, "last": str(last)}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A tree of images to predict: nested folders, PNG and JPEG in upper and lower case,
    a hidden folder and a text file (neither predicted)."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    images = fake_images([3, 8, 1, 5, 9], seed=7)
    layout = ["b/2.png", "a/x.JPG", "a/sub/1.png", ".hidden/3.png", "z.jpeg"]
    for name, pixels in zip(layout, images, strict=True):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / name, format="PNG" if name.endswith("png") else "JPEG")
    (root / "notes.txt").write_text("not an image")
    return root


# ---- the reproductions of issue 24.1 ------------------------------------------------------


@pytest.fixture(scope="module")
def no_test_split(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("no_test"), n_per_class=8)


def test_predict_without_a_test_split_asks_for_the_images(no_test_split, tmp_path):
    with pytest.raises(CIFAR10NotFoundError) as info:
        run(["predict", "--config", LENET, *quick(no_test_split, tmp_path)])
    error = str(info.value)
    assert error.startswith("`predict` needs a test split"), error
    assert "TrainerFn" not in error
    assert "--data.predict_path" in error and str(no_test_split / "test") in error
    assert run_dirs(tmp_path) == []  # nothing written


def test_predict_writes_a_row_per_test_image_in_the_files_order(
    data_dir, trained, tmp_path, caplog
):
    args = quick(data_dir, tmp_path, "--ckpt_path", trained["last"])
    with caplog.at_level("INFO"):
        run(["predict", "--config", LENET, *args])
    (run_dir,) = run_dirs(tmp_path)
    path = run_dir / "predictions.csv"
    rows = read_csv(path)
    # the test split (2 images per class) as the files lie: class by class, by file name
    files = sorted((data_dir / "test").glob("*/*.png"), key=lambda p: p.parts)
    assert [row["index"] for row in rows] == [str(i) for i in range(20)]
    assert [row["label"] for row in rows] == [f.parent.name for f in files]
    assert list(rows[0]) == ["index", "label", "predicted", "probability"] + [
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
    ]
    assert_rows_match(rows, expected_rows(trained["last"], files))
    # named at the end, as the other subcommands' summaries are, and in summary.txt
    assert f"predictions    {path} (20 images)" in caplog.text
    assert f"predictions    {path} (20 images)" in (run_dir / "summary.txt").read_text()


# ---- any folder, one file, a split ----------------------------------------------------------


def test_predict_a_folder_reads_its_images_recursively_in_sorted_order(
    data_dir, trained, photos, tmp_path
):
    args = quick(data_dir, tmp_path, "--ckpt_path", trained["last"])
    with pytest.warns(UserWarning, match=r"skips 1 file\(s\) .*notes.txt"):
        cli = run(["predict", "--config", LENET, *args, "--data.predict_path", str(photos)])
    rows = read_csv(cli.trainer.log_dir / Path("predictions.csv"))
    files = [photos / name for name in ("a/sub/1.png", "a/x.JPG", "b/2.png", "z.jpeg")]
    assert [row["image"] for row in rows] == [str(f) for f in files]
    assert list(rows[0])[:2] == ["image", "predicted"]
    assert_rows_match(rows, expected_rows(trained["last"], files))


def test_predict_one_image_and_top_k(data_dir, trained, photos, tmp_path):
    one = photos / "b" / "2.png"
    args = quick(data_dir, tmp_path, "--ckpt_path", trained["last"], "--predictions.top_k", "10")
    cli = run(["predict", "--config", LENET, *args, "--data.predict_path", str(one)])
    (row,) = read_csv(cli.trainer.log_dir / Path("predictions.csv"))
    assert row["image"] == str(one)
    names = [row["predicted"], *(row[f"class_{r}"] for r in range(2, 11))]
    assert sorted(names) == sorted(CLASSES)  # every class once, the most probable first
    probabilities = [float(row["probability"])] + [
        float(row[f"probability_{r}"]) for r in range(2, 11)
    ]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("split", ["train", "val"])
def test_predict_a_split_of_the_data_in_the_files_order(data_dir, trained, split, tmp_path):
    args = quick(data_dir, tmp_path, "--ckpt_path", trained["last"], "--data.predict_path", split)
    cli = run(["predict", "--config", LENET, *args])
    rows = read_csv(cli.trainer.log_dir / Path("predictions.csv"))
    files = sorted((data_dir / "train").glob("*/*.png"), key=lambda p: p.parts)  # 80
    if split == "train":
        indices = list(range(80))
    else:  # quick(): the 20 of val_size, in the files' order
        indices = cli.datamodule.val_indices.sort().values.tolist()
        assert len(indices) == 20
    assert [int(row["index"]) for row in rows] == list(indices)
    assert [row["label"] for row in rows] == [files[i].parent.name for i in indices]
    assert_rows_match(rows, expected_rows(trained["last"], [files[i] for i in indices]))


def test_predict_last_checkpoint_of_the_config_with_a_folder(data_dir, trained, photos):
    """``--ckpt_path last`` finds the fit of this config: what to predict is no setting of
    the run (it is not among the saved hyper-parameters)."""
    args = quick(data_dir, trained["root"], "--data.predict_path", str(photos / "b"))
    cli = run(["predict", "--config", LENET, *args, "--ckpt_path", "last"])
    assert cli.trainer.ckpt_path == trained["last"]
    (row,) = read_csv(cli.trainer.log_dir / Path("predictions.csv"))
    assert_rows_match([row], expected_rows(trained["last"], [photos / "b" / "2.png"]))


# ---- bad input: one message, exit 2, nothing written ----------------------------------------


def test_a_missing_predict_path_is_one_message_and_nothing_is_written(data_dir, tmp_path):
    missing = tmp_path / "no_such_folder"
    args = quick(data_dir, tmp_path / "root", "--data.predict_path", str(missing))
    done = groupwise("predict", "--config", LENET, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: data.predict_path {str(missing)!r}: no such file or folder; give a folder of"
        " .png|.jpg|.jpeg images (read recursively), one such image, or a split of"
        " data.data_dir: test, train, val."
    )
    assert not (tmp_path / "root").exists()


def test_a_folder_without_images_or_a_file_that_is_none_is_an_error(data_dir, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("")
    (folder / ".b.png").write_text("")  # hidden: not read
    root = tmp_path / "root"
    for path, says in [
        (folder, f"data.predict_path {str(folder)!r} holds no .png|.jpg|.jpeg file (it holds"),
        (folder / "a.txt", f"data.predict_path {str(folder / 'a.txt')!r} is not a .png|.jpg"),
    ]:
        args = quick(data_dir, root, "--data.predict_path", str(path))
        with pytest.raises(ConfigError, match="^" + __import__("re").escape(says)):
            run(["predict", "--config", LENET, *args])
        assert not root.exists()


def test_an_image_that_is_not_32x32_is_an_error_before_anything_is_written(data_dir, tmp_path):
    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(folder / "wide.png")
    args = quick(data_dir, tmp_path / "root", "--data.predict_path", str(folder))
    with pytest.raises(CIFAR10FileError, match=r"wide.png is 48x64 \(HxW\); .* must be 32x32"):
        run(["predict", "--config", LENET, *args])
    assert not (tmp_path / "root").exists()


def test_without_a_logger_the_file_goes_to_the_root_directory(data_dir, trained, tmp_path):
    args = quick(data_dir, tmp_path, "--ckpt_path", trained["last"], "--trainer.logger", "false")
    run(["predict", "--config", LENET, *args])
    # beside the config.yaml Lightning writes there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "predictions.csv"]
    assert len(read_csv(tmp_path / "predictions.csv")) == 20


def test_predict_val_without_held_out_images_is_an_error(data_dir, tmp_path):
    args = quick(data_dir, tmp_path, "--data.predict_path", "val", "--data.val_size", "0")
    with pytest.raises(ConfigError, match="data.val_size is 0"):
        run(["predict", "--config", LENET, *args])
    assert run_dirs(tmp_path) == []


def test_test_without_a_test_split_names_the_subcommand(no_test_split, tmp_path):
    with pytest.raises(CIFAR10NotFoundError, match="^`test` needs a test split"):
        run(["test", "--config", LENET, *quick(no_test_split, tmp_path)])


# ---- properties ---------------------------------------------------------------------------

NAME = st.text(alphabet="aB-_.", min_size=1, max_size=3).filter(lambda s: s not in (".", ".."))
EXTENSION = st.sampled_from([".png", ".PNG", ".jpg", ".Jpeg", ".txt", ".pn", ""])
FILE = st.tuples(st.lists(NAME, max_size=2), NAME, EXTENSION)


@QUICK
@given(st.lists(FILE, max_size=12))
def test_a_folder_lists_every_visible_image_once_in_path_order(files):
    """Every .png/.jpg/.jpeg file (any case) under the folder, at any depth, none in or
    under a hidden name, sorted by the path's parts; no other file."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "in"
        root.mkdir()
        made = []
        for folders, stem, extension in files:
            path = root.joinpath(*folders, stem + extension)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch(exist_ok=False)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue  # the name is already a folder or a file
            made.append(path)
        rel = [p.relative_to(root) for p in made]
        images = [
            root / p
            for p in rel
            if p.suffix.lower() in (".png", ".jpg", ".jpeg")
            and not any(part.startswith(".") for part in p.parts)
        ]
        expected = sorted(images, key=lambda p: p.relative_to(root).parts)
        if not expected:
            with pytest.raises(ConfigError, match="holds no"):
                list_images(root)
            return
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            assert list_images(root) == expected


@QUICK
@given(
    n=st.integers(0, 40),
    world=st.integers(1, 4),
    batch=st.integers(1, 7),
    pad=st.booleans(),
    shuffle=st.randoms(use_true_random=False),
)
def test_rows_of_all_ranks_merge_into_input_order_each_image_once(n, world, batch, pad, shuffle):
    """Ranks take interleaved shares (Lightning's UnrepeatedDistributedSampler; with ``pad``,
    DistributedSampler's padding repeats the first indices up to a multiple of the ranks),
    predict them batch by batch, and are gathered rank by rank: the merged rows are the
    indices 0..n-1 once each, each with its own values."""
    order = list(range(n))
    if pad and n:
        order += order[: (-n) % world]
    shares = [order[rank::world] for rank in range(world)]
    gathered = []
    for share in shares:  # each rank's batches; some ranks may have none
        batches = [share[i : i + batch] for i in range(0, len(share), batch)]
        gathered += [index for b in batches for index in b]
    if shuffle.random() < 0.5:
        shuffle.shuffle(gathered)
    indices = torch.tensor(gathered, dtype=torch.int64)
    values = torch.stack([indices * 10, indices * 10 + 1], dim=1)  # (rows, k)
    merged, merged_values = in_input_order(indices, values)
    assert merged.tolist() == list(range(n))
    assert merged_values.tolist() == [[10 * i, 10 * i + 1] for i in range(n)]


# ---- DDP --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_predict_writes_one_file_in_input_order(data_dir, trained, tmp_path):
    """Two CPU processes (gloo) share 21 images (odd: Lightning's predict sampler gives rank
    0 eleven, rank 1 ten, interleaved) in batches of 4: one file, the single process's rows."""
    folder = tmp_path / "odd"
    for i, pixels in enumerate(fake_images([i % 10 for i in range(21)], seed=3)):
        (folder / f"{i // 7}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i // 7}" / f"{i:02d}.png")
    common = ["--ckpt_path", trained["last"], "--data.predict_path", str(folder)]
    common += ["--data.batch_size", "4"]
    found = {}
    for name, extra in [
        ("single", []),
        ("ddp", ["--trainer.strategy", "ddp", "--trainer.devices", "2"]),
    ]:
        root = tmp_path / name
        done = groupwise("predict", "--config", LENET, *quick(data_dir, root, *common, *extra))
        assert done.returncode == 0, done.stderr[-3000:]
        (run_dir,) = run_dirs(root)
        assert sorted(p.name for p in run_dir.glob("*.csv")) == ["predictions.csv"]
        found[name] = read_csv(run_dir / "predictions.csv")
    files = sorted(folder.glob("*/*.png"), key=lambda p: p.parts)
    assert [row["image"] for row in found["ddp"]] == [str(f) for f in files]
    assert found["ddp"] == found["single"]
    assert_rows_match(found["ddp"], expected_rows(trained["last"], files))


@pytest.mark.slow
def test_ddp_predict_of_a_missing_path_is_one_message(data_dir, tmp_path):
    """Checked before the second process starts: one message, no rank's traceback."""
    missing = tmp_path / "missing"
    args = quick(data_dir, tmp_path / "root", "--data.predict_path", str(missing))
    done = groupwise(
        "predict", "--config", LENET, *args, "--trainer.strategy", "ddp", "--trainer.devices", "2"
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.count(f"error: data.predict_path {str(missing)!r}: no such file") == 1
    assert not (tmp_path / "root").exists()
