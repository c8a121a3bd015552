"""Atomic file writes: write to a temporary name in the same directory, then rename into place."""
from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def sha256_stream(f) -> str:
    """Hex sha256 of an open binary file, read from its current position to its end in 1 MB blocks."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it back would change
    it for a moment for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def usual_mode(path: str | Path, directory: bool = False) -> None:
    """Give a temporary file (or directory) the permissions a plain ``open`` (``mkdir``) would, 0666
    (0777) less the umask: ``tempfile`` makes them private to the owner."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def sync(path: str | Path) -> None:
    """Flush a written file, or a directory's entries (after a rename into it), to the disk, so that a
    crash cannot leave a renamed name pointing at unwritten data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success move it to ``path`` (its data synced to the
    disk first), on error delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    usual_mode(tmp)
    try:
        yield Path(tmp)
        sync(tmp)
        os.replace(tmp, path)
        sync(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomic UTF-8 text (whatever the locale: the reports declare UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _finite(data):
    """``data`` with every NaN or infinite float replaced by None: JSON has no such numbers."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json(path: str | Path, data) -> None:
    """Atomic JSON (see :func:`write_text`); NaN and infinities are written as null."""
    write_text(path, json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False) + "\n")


#: errors of a file system without working ``flock`` (e.g. NFS without a lock daemon, Lustre without
#: ``-o flock``): the work goes on unlocked there, with a warning
_NO_FLOCK = {getattr(errno, name) for name in ("ENOSYS", "ENOLCK", "EOPNOTSUPP", "ENOTSUP", "EINVAL")
             if hasattr(errno, name)}


@contextmanager
def locked(path: str | Path, busy: str | None = None):
    """Hold an exclusive lock on the file ``path`` (``flock``) while the block runs; the file is created,
    and removed at the end. The system releases the lock of a process that ends, so a killed holder
    leaves no lock in force. When another process holds it: wait, or with a ``busy`` message raise
    ``ValueError(busy)`` at once. Not POSIX (no ``fcntl``), or a file system without ``flock``: no lock
    (with a warning for the latter)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    while True:
        try:  # not through a symbolic link: one planted at the path would make this create a file elsewhere
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ValueError(f"{path}: is a symbolic link; a lock file must be a regular file (remove the "
                                 f"link)") from None
            raise
        f = os.fdopen(fd, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if busy is None else fcntl.LOCK_NB))
        except BlockingIOError:
            f.close()
            raise ValueError(busy) from None
        except OSError as err:
            f.close()
            if err.errno not in _NO_FLOCK:
                raise
            from deepmetric._checks import warn
            warn(f"{path}: the file system cannot lock files ({err.strerror}); going on without the lock, so "
                 "nothing keeps two processes from writing here at once")
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
            return
        except BaseException:
            f.close()
            raise
        try:  # still the file at the path: the holder before may have removed it as this one waited
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        f.close()
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            f.close()
