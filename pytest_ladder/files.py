"""Files on disk: the one atomic write (temporary file in the same folder, fsync, rename) that the seal, the theorem
record and the archive use, and the one way a path is shown to people (relative to a folder they know)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the caller makes it visible atomically)."""
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def fsync_dir(path: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path | str, content: str | bytes) -> None:
    """Replace `path` with `content` (str as UTF-8) through a temporary file beside it and a rename: readers see the
    old file or the new one, never half of it. The file keeps its permissions."""
    path = Path(path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write_synced(Path(temp), data)
        if path.exists():
            os.chmod(temp, path.stat().st_mode & 0o7777)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def display_path(path: Path | str, *bases: Path | str | None) -> str:
    """`path` relative to the first of `bases` it lies under (POSIX separators), else as given."""
    path = Path(path)
    for base in bases:
        if base is None:
            continue
        try:
            return path.resolve().relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            continue
    return str(path)
