"""Report directories that are checked before any work and replaced whole, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["ReportDirError", "check_report_dir", "replace_report_dir"]


class ReportDirError(ValueError):
    """The report directory cannot be written, or holds files that would be overwritten."""


def check_report_dir(
    path: str | os.PathLike, *, overwrite: bool, option: str = "--out", flag: str = "--overwrite"
) -> Path:
    """Check, before any work, that a report can be written to `path`; returns it absolute.

    The directory may not exist yet (its parents are created when writing) or be empty.
    A non-empty one is refused unless `overwrite`, and even then unless it looks like a
    report (index.html or modes.json in it), so a mistyped `--out .` never replaces a
    directory of other files. Writability is probed by creating (and removing) a temporary
    directory in the nearest existing ancestor, which also works where permission bits say
    nothing (root, read-only mounts).

    Args:
        path: the report directory.
        overwrite: whether an existing report may be replaced.
        option: how errors name the setting (the CLI option or config key).
        flag: how errors name the way to allow overwriting.

    Raises:
        ReportDirError: with a message naming `option` and the fix.
    """
    out = Path(os.path.abspath(path))
    if out.is_symlink():
        out = out.resolve()
    if out.exists():
        if not out.is_dir():
            raise ReportDirError(f"{option} {out} exists and is not a directory")
        if any(out.iterdir()):
            if not overwrite:
                raise ReportDirError(
                    f"{option} {out} is not empty (a report from an earlier run?); pass {flag} "
                    "to replace it, or choose a new directory"
                )
            if not any((out / name).is_file() for name in ("index.html", "modes.json")):
                raise ReportDirError(
                    f"{option} {out} is not empty and holds no SPEC report (no index.html or "
                    f"modes.json), so it is not replaced even with {flag}; choose a new "
                    "directory"
                )
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportDirError(f"{option} {out} cannot be created: {ancestor} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.check-", dir=ancestor))
    except OSError as err:
        raise ReportDirError(
            f"{option} {out} cannot be written ({err.strerror or err} in {ancestor}); choose "
            "a writable directory"
        ) from err
    return out


def replace_report_dir(out: str | os.PathLike, write: Callable[[Path], Path]) -> Path:
    """Run `write(staging_dir)` in a new directory beside `out`, then swap it in for `out`.

    A failure while writing removes the staging directory and leaves `out` as it was; the
    swap itself is two renames on the same file system (the old directory is restored if
    the second fails), and the old report is deleted only after the new one is in place.

    Returns:
        The path `write` returned, moved into `out` (e.g. out/index.html).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would stick to the report
    try:
        written = Path(write(staging))
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            if old is not None:
                os.rename(old, out)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out / written.relative_to(staging)
