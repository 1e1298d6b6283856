"""What a failed command must leave alone: every file under a directory, by content."""

import hashlib
import re
from pathlib import Path

# What Lightning writes into a new version directory before configure_optimizers runs.
SETUP_FILES = re.compile(r"lightning_logs/(version_\d+)/(config\.yaml|events\.out\.tfevents\..+)")


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_kept(root: Path, before: dict[str, tuple[str, int]]) -> None:
    """Every earlier file is still there, byte-identical and not rewritten; anything new is
    a new version directory's config.yaml or event file, never a checkpoint."""
    after = snapshot(root)
    assert {path: after.get(path) for path in before} == before
    old_versions = {path.split("/")[1] for path in before if path.startswith("lightning_logs/")}
    for path in sorted(set(after) - set(before)):
        match = SETUP_FILES.fullmatch(path)
        assert match and match[1] not in old_versions, f"unexpected new file {path}"
