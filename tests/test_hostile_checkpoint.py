"""Untrusted checkpoints (issue 26): a checkpoint names files, and nothing it names is
removed, written or linked outside the resumed run's own checkpoint folder.

ModelCheckpoint's state in a checkpoint holds ``best_model_path``, the keys of
``best_k_models``, ``kth_best_model_path`` and ``last_model_path``; Lightning restores them
and at the next save removes the "previous" file, after a lexical check only (``..`` and
symlinks are not resolved, a ``local://`` path is not checked at all) and with
``rm(recursive=True)``. The crafted ``last.ckpt`` of the issue is run as the user ran it
(``groupwise fit --ckpt_path shared.ckpt`` in a subprocess); the properties put generated
hostile paths (``..``, absolute, ``local://`` / ``file://`` URLs, symlinks out of the folder,
a directory in it) into every one of those fields and resume a real fit from them.
"""

import copy
import hashlib
import os
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from cli_run import GROUPWISE, LENET, quick, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st

from groupwise.checkpoint.io import AtomicCheckpointIO
from groupwise.checkpoint.untrusted import PATH_FIELDS, drop_untrusted_paths, inside_folder
from groupwise.cli import run

ONE_BATCH = ("--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1")


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory) -> dict:
    """An ordinary ``last.ckpt`` of a one-epoch LeNet run, loaded."""
    root = tmp_path_factory.mktemp("source")
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "1", *ONE_BATCH)])
    return torch.load(root / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)


def model_checkpoint_states(checkpoint: dict) -> tuple[dict, dict]:
    """The states of the run's two ModelCheckpoints: ``checkpoint`` (monitors val/acc) and
    ``last_checkpoint`` (no metric: ``last.ckpt``)."""
    states = [s for k, s in checkpoint["callbacks"].items() if k.startswith("ModelCheckpoint")]
    monitored = next(s for s in states if s["monitor"] == "val/acc")
    last = next(s for s in states if s["monitor"] is None)
    return monitored, last


def test_the_crafted_last_ckpt_of_the_issue_leaves_the_directory_it_names(
    source, data_dir, tmp_path
):
    project = tmp_path
    (project / "precious").mkdir()
    (project / "precious" / "notes.txt").write_text("keep me\n")
    hostile = "lightning_logs/version_0/checkpoints/../../../precious"
    checkpoint = copy.deepcopy(source)
    _, last = model_checkpoint_states(checkpoint)
    last["best_model_path"] = hostile
    torch.save(checkpoint, project / "shared.ckpt")
    args = quick(data_dir, project, "--trainer.max_epochs", "2", *ONE_BATCH)
    done = subprocess.run(
        [GROUPWISE, "fit", "--config", LENET, *args, "--ckpt_path", "shared.ckpt"],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (project / "precious" / "notes.txt").read_text() == "keep me\n"
    named = [line for line in done.stderr.splitlines() if repr(hostile) in line]
    assert len(named) == 1 and "outside" in named[0], done.stderr
    saved = torch.load(project / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert saved["epoch"] == 1


# ---- hostile paths and layouts, generated ------------------------------------------------

# Targets relative to the project root, with whether the path resolves outside the run's
# checkpoint folder ``ckpts/``. ``ckpts/to_precious`` and ``ckpts/to_notes.ckpt`` are
# symlinks in the folder that point out of it; ``ckpts/sub`` is a directory in it.
TARGETS = {
    "precious": True,
    "precious/notes.txt": True,
    "precious/deep": True,
    "ckpts-old/x.ckpt": True,  # shares the folder's name as a string prefix
    "shared.ckpt": True,  # the checkpoint resumed from
    ".": True,
    "lightning_logs": True,  # the run's own logs
    "ckpts": True,  # the folder itself
    "ckpts/sub/..": True,
    "ckpts/to_precious": True,
    "ckpts/to_precious/notes.txt": True,
    "ckpts/to_notes.ckpt": True,
    "ckpts/sub": False,  # inside, but a directory: never removed
}


def layout(root: Path) -> None:
    """The project a hostile checkpoint is resumed in."""
    for folder in ("precious/deep", "ckpts-old", "ckpts/sub", "lightning_logs"):
        (root / folder).mkdir(parents=True)
    (root / "precious/notes.txt").write_text("keep me\n")
    (root / "precious/deep/more.txt").write_text("and me\n")
    (root / "ckpts-old/x.ckpt").write_bytes(b"old run")
    (root / "ckpts/sub/inner.txt").write_text("a directory in the folder\n")
    (root / "lightning_logs/keep.txt").write_text("earlier logs\n")
    (root / "ckpts/to_precious").symlink_to("../precious", target_is_directory=True)
    (root / "ckpts/to_notes.ckpt").symlink_to("../precious/notes.txt")


@st.composite
def hostile_paths(draw, root: Path) -> tuple[str, bool]:
    """A path to one of ``TARGETS`` spelled one of the ways a checkpoint could, and whether
    it lies outside ``root/ckpts``."""
    target = draw(st.sampled_from(sorted(TARGETS)))
    spelling = draw(st.sampled_from(["absolute", "relative", "dotdot", "deep-dotdot", "url"]))
    if spelling == "absolute":
        path = f"{root}/{target}"
    elif spelling == "relative":  # to the working directory, the project root
        path = draw(st.sampled_from([target, f"./{target}"]))
    elif spelling == "dotdot":
        path = draw(st.sampled_from([f"{root}/ckpts/../{target}", f"ckpts/../{target}"]))
    elif spelling == "deep-dotdot":
        path = f"{root}/ckpts/sub/../../{target}"
    else:  # fsspec URLs: Lightning checks only plain local paths before removing
        scheme = draw(st.sampled_from(["local://", "file://", "simplecache::file://"]))
        path = f"{scheme}{root}/{target}"
    if draw(st.booleans()):
        path = path.replace("/", "//", 1) if draw(st.booleans()) else f"{path}/"
    return path, TARGETS[target] or spelling == "url"


FIELDS = ("best_model_path", "best_k_models", "last_model_path")


@st.composite
def hostile_checkpoints(draw, root: Path) -> tuple[dict, list[tuple[str, bool]]]:
    """Which paths go where: for each of the two ModelCheckpoint states, the fields to
    poison (a ``best_k_models`` key is also ``kth_best_model_path``, with a score any
    new one beats); and ``save_last`` of the monitored callback (None, True, "link":
    only then is ``last_model_path`` removed)."""
    plan: dict = {"save_last": draw(st.sampled_from([None, True, "link"]))}
    used = []
    for name in ("monitored", "last"):
        fields = draw(st.sets(st.sampled_from(FIELDS), min_size=1))
        plan[name] = {}
        for field in sorted(fields):
            path, outside = draw(hostile_paths(root))
            plan[name][field] = path
            used.append((path, outside))
    return plan, used


def craft(source: dict, plan: dict, folder: Path) -> dict:
    """``source`` with the plan's paths in its ModelCheckpoint states, whose ``dirpath`` is
    the resumed run's folder (so that Lightning restores every field, not only
    ``best_model_path``)."""
    checkpoint = {**source, "callbacks": {k: dict(v) for k, v in source["callbacks"].items()}}
    for state, name in zip(model_checkpoint_states(checkpoint), ("monitored", "last"), strict=True):
        state["dirpath"] = str(folder)
        for field, path in plan[name].items():
            if field == "best_k_models":
                state["best_k_models"] = {path: torch.tensor(-1.0)}
                state["kth_best_model_path"], state["kth_value"] = path, torch.tensor(-1.0)
            else:
                state[field] = path
    return checkpoint


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (symlinks not followed): a file by its sha256 and mtime, a
    symlink by its target, a directory as such."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif stat.S_ISDIR(mode):
                entries[str(path.relative_to(root))] = ("dir",)
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                entries[str(path.relative_to(root))] = ("file", digest, path.stat().st_mtime_ns)
    return entries


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """``contextlib.chdir`` (Python 3.11+) for 3.10."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def resume_hostile(source: dict, data_dir: Path, draw_plan, check=None) -> list[str]:
    """Resume a one-step fit in a fresh project from a checkpoint drawn by ``draw_plan``;
    check that nothing outside its checkpoint folder changed, no directory in it, and that
    every restored path outside it was named in a warning, then ``check(root)``; return
    the warnings."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        layout(root)
        plan, used = draw_plan(root)
        folder = root / "ckpts"
        torch.save(craft(source, plan, folder), root / "shared.ckpt")
        before = tree(root)
        args = quick(data_dir, root, "--trainer.max_epochs", "2", *ONE_BATCH)
        args += ["--checkpoint.dirpath", str(folder), "--last_checkpoint.dirpath", str(folder)]
        if plan["save_last"] is not None:
            args += ["--checkpoint.save_last", str(plan["save_last"]).lower()]
        with working_directory(root), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(["fit", "--config", LENET, *args, "--ckpt_path", "shared.ckpt"])
        after = tree(root)
        outside = {k: v for k, v in before.items() if not k.startswith("ckpts/")}
        assert {k: after.get(k) for k in outside} == outside
        assert after.get("ckpts/sub/inner.txt") == before["ckpts/sub/inner.txt"]
        assert (root / "lightning_logs/version_0/config.yaml").is_file()
        assert (folder / "last.ckpt").is_file()
        messages = [str(w.message) for w in caught]
        for path, is_outside in used:
            named = any(repr(path) in m and "outside" in m for m in messages)
            # a file (or nothing) directly beside shared.ckpt is dropped without a word, as
            # an ordinary resume drops the earlier run's best and last files
            resolved = Path(os.path.realpath(root / path)) if isinstance(path, str) else None
            quiet = (
                resolved is not None
                and "://" not in path
                and "::" not in path
                and resolved.parent == root
                and (not os.path.lexists(resolved) or resolved.is_file())
            )
            assert named == (is_outside and not quiet), (path, messages)
        if check is not None:
            check(root)
        return messages


@given(st.data())
@settings(max_examples=6, deadline=None)
def test_a_resume_from_a_hostile_checkpoint_changes_nothing_outside_its_folder(
    source, data_dir, data
):
    resume_hostile(source, data_dir, lambda root: data.draw(hostile_checkpoints(root)))


@pytest.mark.slow
@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_resume_from_a_hostile_checkpoint_changes_nothing_outside_its_folder_many(
    source, data_dir, data
):
    resume_hostile(source, data_dir, lambda root: data.draw(hostile_checkpoints(root)))


def test_the_cases_the_property_found_on_lightnings_checks(source, data_dir):
    """Found on the old code: Lightning removed the run's own logs through a ``local://``
    URL (it checks only plain paths) and the whole project through ``ckpts/.././`` (its
    check is lexical); a symlink in the folder led out of it."""

    def plan(root: Path) -> tuple[dict, list[tuple[str, bool]]]:
        paths = {
            "through": f"{root}/ckpts/.././",
            "symlink": "ckpts/to_precious/notes.txt",
            "url": f"local://{root}/lightning_logs",
        }
        monitored = {"best_k_models": paths["through"], "last_model_path": paths["symlink"]}
        drawn = {
            "save_last": True,
            "monitored": monitored,
            "last": {"best_model_path": paths["url"]},
        }
        return drawn, [(path, True) for path in paths.values()]

    resume_hostile(source, data_dir, plan)


def test_a_directory_in_the_folder_is_never_removed(source, data_dir):
    """Inside the folder, so it is restored; Lightning would remove it recursively, the
    checkpoint IO leaves it with a warning."""

    def plan(root: Path) -> tuple[dict, list[tuple[str, bool]]]:
        path = f"{root}/ckpts/sub"
        return {"save_last": None, "monitored": {}, "last": {"best_model_path": path}}, [
            (path, False)
        ]

    messages = resume_hostile(source, data_dir, plan)
    refused = [m for m in messages if m.startswith("not removing checkpoint path")]
    assert len(refused) == 1
    assert refused[0].endswith(
        "/ckpts/sub': not a regular file (a checkpoint is never a directory)"
    )


def test_a_restored_checkpoint_in_the_folder_is_still_replaced_by_a_better_one(source, data_dir):
    """Lightning's own top-k removal keeps working for a restored path in the folder."""

    def plan(root: Path) -> tuple[dict, list[tuple[str, bool]]]:
        (root / "ckpts" / "old.ckpt").write_bytes(b"an earlier top-1 checkpoint")
        path = f"{root}/ckpts/old.ckpt"
        return {"save_last": None, "monitored": {"best_k_models": path}, "last": {}}, [
            (path, False)
        ]

    def removed(root: Path) -> None:
        assert not (root / "ckpts" / "old.ckpt").exists()
        assert len(list((root / "ckpts").glob("epoch*.ckpt"))) == 1

    messages = resume_hostile(source, data_dir, plan, check=removed)
    assert not any("old.ckpt" in m for m in messages)


# ---- each line of defence on its own, over many generated cases --------------------------


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_the_checkpoint_io_removes_only_files_and_links_in_a_folder_it_saved_into(data):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        layout(root)
        io = AtomicCheckpointIO()
        io.save_checkpoint({"state_dict": {}}, root / "ckpts" / "new.ckpt")
        (root / "ckpts" / "old.ckpt").write_bytes(b"an earlier checkpoint")
        before = tree(root)
        requests = data.draw(st.lists(hostile_paths(root), min_size=1, max_size=4))
        with working_directory(root), warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            for path, _ in requests:
                io.remove_checkpoint(path)
            io.remove_checkpoint("ckpts/old.ckpt")
        after = tree(root)
        gone = {k for k, v in before.items() if after.get(k) != v}
        # only the earlier checkpoint, and a symlink in the folder named itself
        assert gone - {"ckpts/old.ckpt"} <= {"ckpts/to_precious", "ckpts/to_notes.ckpt"}
        assert "ckpts/old.ckpt" in gone and not set(after) - set(before)


def test_the_checkpoint_io_removes_nothing_in_a_folder_it_did_not_save_into(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.ckpt").write_bytes(b"someone else's")
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {}}, tmp_path / "ckpts" / "new.ckpt")
    with pytest.warns(UserWarning, match="not in a folder this run saved checkpoints into"):
        io.remove_checkpoint(tmp_path / "elsewhere" / "x.ckpt")
    assert (tmp_path / "elsewhere" / "x.ckpt").read_bytes() == b"someone else's"


@st.composite
def restored_states(draw, root: Path) -> tuple[dict, dict[str, bool]]:
    """A ModelCheckpoint state whose paths are drawn from hostile ones and the folder's own
    checkpoints ``root/ckpts/epoch{0,1,2}.ckpt``; with whether each path is outside."""
    own = st.sampled_from([(f"{root}/ckpts/epoch{i}.ckpt", False) for i in range(3)])
    drawn = draw(st.lists(st.one_of(own, hostile_paths(root)), min_size=1, max_size=6))
    outside = dict(drawn)
    paths = list(outside)
    keys = draw(st.lists(st.sampled_from(paths), max_size=4, unique=True))
    scores = draw(st.lists(st.floats(0, 1), min_size=len(keys), max_size=len(keys)))
    state = {
        "best_k_models": {k: torch.tensor(v) for k, v in zip(keys, scores, strict=True)},
        "best_model_path": draw(st.sampled_from(keys or paths)),
        "kth_best_model_path": draw(st.sampled_from(keys or paths)),
        "last_model_path": draw(st.sampled_from(["", *paths])),
        "best_model_score": torch.tensor(0.5),
        "kth_value": torch.tensor(0.5),
    }
    return state, outside


@given(st.data(), st.sampled_from(["min", "max"]))
@settings(max_examples=150, deadline=None)
def test_restored_paths_outside_the_folder_are_dropped_and_the_state_stays_usable(data, mode):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp).resolve()
        layout(root)
        for i in range(3):
            (root / "ckpts" / f"epoch{i}.ckpt").write_bytes(b"a checkpoint")
        state, outside = data.draw(restored_states(root))
        original = copy.deepcopy(state)
        with working_directory(root):
            dropped = drop_untrusted_paths(state, str(root / "ckpts"), mode)
        named = [*original["best_k_models"], *(original[f] for f in PATH_FIELDS)]
        assert set(dropped) == {repr(p) for p in named if p and outside[p]}
        kept = state["best_k_models"]
        assert set(kept) == {p for p in original["best_k_models"] if not outside[p]}
        assert all(state[field] == "" or not outside[state[field]] for field in PATH_FIELDS)
        if kept:  # Lightning's next top-k save looks the kth up in best_k_models
            assert state["kth_best_model_path"] in kept
        if outside.get(original["kth_best_model_path"]) and kept:
            worst = (max if mode == "min" else min)(kept, key=kept.get)
            assert state["kth_best_model_path"] == worst
            assert state["kth_value"] == kept[worst]
        if outside.get(original["best_model_path"]):
            best = (min if mode == "min" else max)(kept, key=kept.get) if kept else ""
            assert state["best_model_path"] == best
            assert state["best_model_score"] == (kept[best] if kept else None)


def test_a_remote_folder_holds_only_plain_names_below_it():
    folder = "s3://bucket/run/ckpts"
    assert inside_folder("s3://bucket/run/ckpts/epoch1.ckpt", folder)
    assert inside_folder("s3://bucket/run/ckpts/sub/epoch1.ckpt", folder)
    for path in [
        "s3://bucket/run/ckpts",
        "s3://bucket/run/ckpts/../x.ckpt",
        "s3://bucket/run/ckpts//x.ckpt",
        "s3://bucket/run/ckpts-old/x.ckpt",
        "/bucket/run/ckpts/x.ckpt",
        "memory://bucket/run/ckpts/x.ckpt",
    ]:
        assert not inside_folder(path, folder), path


def test_an_ordinary_resume_into_a_new_run_folder_warns_of_no_path(data_dir, tmp_path):
    """The earlier run's best and last files lie in the folder of the checkpoint resumed
    from: they are the user's own, not hostile; dropped (this run removes only its own
    files) without a warning on every ordinary resume."""
    args = quick(data_dir, tmp_path, *ONE_BATCH)
    run(["fit", "--config", LENET, *args, "--trainer.max_epochs", "1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(["fit", "--config", LENET, *args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    outside = [str(w.message) for w in caught if "outside this run" in str(w.message)]
    assert outside == []
    resumed = torch.load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert resumed["epoch"] == 1
