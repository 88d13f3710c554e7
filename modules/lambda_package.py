"""Deterministic Lambda packages: same source, same zip bytes, on every machine.

cdktf's own ARCHIVE assets zip a directory as it is on disk (including __pycache__ left by
tests, with file modes and timestamps), which would make the synthesized asset hash, and so
the snapshots and plans, differ between machines.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import zipfile
from pathlib import Path

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_STAGING: list[Path] = []


def _cleanup() -> None:
    for path in _STAGING:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_cleanup)


def build_zip(source_dir: Path, *, name: str) -> Path:
    """Zip the *.py files of `source_dir` (sorted, fixed timestamps and modes) into a
    staging directory that is removed at interpreter exit; returns the zip's path."""
    staging = Path(tempfile.mkdtemp(prefix=f"lambda-{name}-"))
    _STAGING.append(staging)
    target = staging / f"{name}.zip"
    files = sorted(p for p in source_dir.rglob("*.py") if "__pycache__" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no Python sources in {source_dir}")
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(source_dir).as_posix(), date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return target
