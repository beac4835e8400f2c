"""Writing files so that a crash or a failure never leaves a half-written one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(
    path: Path, write: Callable[[BinaryIO], object], *, mode: int | None = None
) -> None:
    """Write ``path`` through a temporary file beside it, ``fsync`` and a rename.

    A failure or a crash at any point leaves ``path`` as it was (absent or the previous
    version); a failure removes the temporary file. The file gets ``mode`` when given, else
    it stays private (0600) as ``mkstemp`` creates it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())  # the rename must not land before the data do
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def plain_mode() -> int:
    """The mode that a plain ``open()`` gives a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
