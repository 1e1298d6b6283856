"""What a failed command must leave alone: every file under a directory, by content."""

import hashlib
from pathlib import Path


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
    """Every earlier file is still there, byte-identical and not rewritten, and nothing is
    new: a command that fails before its first step leaves the tree as it was (no run
    directory, config.yaml or event file either)."""
    after = snapshot(root)
    assert {path: after.get(path) for path in before} == before
    assert sorted(set(after) - set(before)) == []
