"""Which images ``predict`` reads: a split of the data, a folder of image files or one file.

``data.predict_path`` names them. ``test``, ``train`` and ``val`` are the splits of
``data.data_dir`` (``val``: the images held out of training); anything else is a path: a
folder is read recursively, every ``.png``/``.jpg``/``.jpeg`` file (any case) in it and in
its subfolders, hidden files and folders (a name starting with ``.``, such as the decode
cache) skipped, in sorted order of the path's parts (each folder's files and subfolders by
name), or a single image file. A folder named like a split is given as a path: ``./test``.

torchvision's ``ImageFolder`` needs a folder per class and labels every image by it;
the images to predict have no labels and may lie in any tree, so they are listed here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from groupwise.data.cifar10_files import IMAGE_EXTENSIONS
from groupwise.errors import ConfigError

SPLITS = ("test", "train", "val")


def valid_inputs() -> str:
    """What ``data.predict_path`` may be, for error messages."""
    return (
        f"give a folder of {'|'.join(IMAGE_EXTENSIONS)} images (read recursively), one such"
        f" image, or a split of data.data_dir: {', '.join(SPLITS)}"
    )


def is_image(name: str) -> bool:
    """Whether a file name has one of the image extensions (in any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(path: str | os.PathLike) -> list[Path]:
    """The image files at ``path`` (a folder, recursively, or one file) in the order
    predictions are written; raises ``ConfigError`` for a path that does not exist, a file
    that is not an image, or a folder with no image in it."""
    path = Path(path)
    if path.is_file():
        if not is_image(path.name):
            raise ConfigError(
                f"data.predict_path {str(path)!r} is not a {'|'.join(IMAGE_EXTENSIONS)} file:"
                f" {valid_inputs()}."
            )
        return [path]
    if not path.is_dir():
        raise ConfigError(
            f"data.predict_path {str(path)!r}: no such file or folder; {valid_inputs()}."
        )
    images, others = [], []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            (images if is_image(name) else others).append(Path(folder, name))
    if not images:
        holds = f" (it holds {sorted(str(p) for p in others)[:5]})" if others else ""
        raise ConfigError(
            f"data.predict_path {str(path)!r} holds no {'|'.join(IMAGE_EXTENSIONS)} file"
            f"{holds}; {valid_inputs()}."
        )
    if others:
        shown = ", ".join(sorted(str(p) for p in others)[:5]) + (", ..." * (len(others) > 5))
        warnings.warn(
            f"predict skips {len(others)} file(s) in {path} that are not"
            f" {'|'.join(IMAGE_EXTENSIONS)}: {shown}",
            stacklevel=2,
        )
    return sorted(images, key=lambda p: p.parts)
