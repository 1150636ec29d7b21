"""Files replaced atomically: a temporary file in the same directory, fsynced, renamed over
the old one, then the directory fsynced. A crash leaves the old file or the new one, never
a mix (miniircd's way, without its ``exec``).

Both the history (clear, compaction) and the admin accounts use it. The ``write`` and
``fsync`` functions can be passed in so callers' tests can inject disk errors.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable


def write_fully(fd: int, data: bytes, write: Callable[[int, memoryview], int] = os.write) -> int:
    """``os.write`` until everything is written (a short write is legal on any file).

    On OSError the exception carries ``written``, the bytes that did reach the file, so an
    appender never writes them twice.
    """
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            n = write(fd, view[done:])
            if n <= 0:
                raise OSError(errno.EIO, "write wrote nothing")
            done += n
    except OSError as exc:
        exc.written = done  # type: ignore[attr-defined]
        raise
    return done


def fsync_dir(directory: str, fsync: Callable[[int], None] = os.fsync) -> None:
    """Make a rename durable; file systems that can't fsync a directory are let be."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def replace_file(
    path: str,
    data: bytes,
    mode: int | None = None,
    *,
    write: Callable[[int, memoryview], int] = os.write,
    fsync: Callable[[int], None] = os.fsync,
) -> None:
    """Atomically make ``data`` the whole content of ``path``.

    ``mode`` None keeps the old file's mode (clearing the history must not change who may
    read it); a given mode applies from the first byte on, since the temporary file is
    created with it (0600 for secrets: no other user ever sees them).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            mode = None
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)  # the umask may have removed bits, never added any
            write_fully(fd, data, write)
            fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory, fsync)
