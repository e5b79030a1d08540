"""The one way anything of this project is written to the user's disk.

- ``check_output(target, overwrite=, kind=)``: refuse an existing file or folder unless
  ``overwrite``, refuse to put a folder where a non-folder is (even with ``overwrite``), and check
  that the target's parent is a writable folder: called by commands before any work starts.
- ``reserve(...)``: the same, then an exclusive lock on the target (``.NAME.lock`` next to it,
  ``fcntl.flock``), held until ``release``/``release_all`` or the process ends. A second process
  writing the same target fails at once with a clear message. Reentrant within one process.
- ``write_folder(target, fill)`` / ``write_file(target, data)``: write into a hidden sibling
  (``.NAME.tmp-*``), then rename into place; the previous folder is replaced only with ``overwrite``.
  A failure (a full disk, a permission) leaves the target as it was and raises ``OutputError``
  naming the path.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from .errors import OutputError

logger = logging.getLogger(__name__)

Kind = Literal["folder", "file"]
PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class _Lock:
    path: Path
    fd: int
    count: int = 1
    created: list[Path] = field(default_factory=list)  # parent folders this reservation made


_HELD: dict[str, _Lock] = {}


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _key(target: Path) -> str:
    return str(Path(os.path.abspath(target)))


def describe_os_error(exc: OSError) -> str:
    """An OSError as the reason half of a message, with the fix."""
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return "no space left on the device; free some space or choose another place"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied; choose a folder you can write to"
    if code == errno.EROFS:
        return "the file system is read-only; choose a folder you can write to"
    if code == errno.ENOTDIR:
        return "a part of the path is a file, not a folder; choose another place"
    if code == errno.ENAMETOOLONG:
        return "the name is too long; choose a shorter path"
    reason = exc.strerror or " ".join(str(exc).split())[:200] or type(exc).__name__
    return f"{reason}; choose another place"


def _nearest_existing(path: Path) -> Path:
    current = Path(os.path.abspath(path))
    while not os.path.lexists(current):
        current = current.parent
    return current


def check_parent_writable(target: Path, *, what: str) -> None:
    """The nearest existing ancestor of ``target`` is a folder we can create files in (probed for real)."""
    ancestor = _nearest_existing(target.parent if str(target.parent) else Path("."))
    if not ancestor.is_dir():
        raise OutputError(f"{what} {target}: {ancestor} is a file, not a folder; choose another place")
    try:
        fd, probe = tempfile.mkstemp(prefix=".detox-probe-", dir=str(ancestor))
    except OSError as exc:
        raise OutputError(f"{what} {target}: cannot write in {ancestor}: {describe_os_error(exc)}") from None
    os.close(fd)
    os.unlink(probe)


def check_output(target: PathLike, *, overwrite: bool, kind: Kind = "folder", what: str = "--out") -> Path:
    """Refuse what may not be written (see the module doc) before any work starts; return the path."""
    path = Path(target)
    if not str(target).strip():
        raise OutputError(f"{what} is empty; pass a path")
    if os.path.lexists(path):
        is_dir = path.is_dir() and not path.is_symlink()
        if kind == "folder" and not is_dir:
            raise OutputError(f"{what} {path} exists and is not a folder; it is never replaced by a folder "
                              f"(not even with --overwrite): remove it yourself or choose another path")
        if kind == "file" and is_dir:
            raise OutputError(f"{what} {path} is a folder; it is never replaced by a file: choose a file path")
        if not overwrite:
            raise OutputError(f"{what} {path} already exists; choose a new path or pass --overwrite "
                              f"(overwrite=True)")
    check_parent_writable(path, what=what)
    return path


def reserve(target: PathLike, *, overwrite: bool, kind: Kind = "folder", what: str = "--out") -> Path:
    """``check_output``, then hold the exclusive lock on ``target`` (reentrant in one process)."""
    path = check_output(target, overwrite=overwrite, kind=kind, what=what)
    _acquire(path, what=what)
    return path


def _acquire(path: Path, *, what: str) -> _Lock:
    key = _key(path)
    held = _HELD.get(key)
    if held is not None:
        held.count += 1
        return held
    created = _make_parents(path.parent, what=what)
    lock_file = lock_path(path)
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            _remove_created(created)
            raise OutputError(f"{what} {path}: cannot create the lock {lock_file}: {describe_os_error(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            _remove_created(created)
            raise OutputError(f"{what} {path} is being written by another detox process (it holds {lock_file}); "
                              f"wait for it to finish or choose another path") from None
        try:  # the holder before us may have removed the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    lock = _Lock(lock_file, fd, created=created)
    _HELD[key] = lock
    return lock


def _make_parents(folder: Path, *, what: str) -> list[Path]:
    missing = []
    current = Path(os.path.abspath(folder))
    while not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    for item in reversed(missing):
        try:
            item.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            _remove_created([m for m in missing if m.exists()])
            raise OutputError(f"{what}: cannot create the folder {item}: {describe_os_error(exc)}") from None
    return missing


def _remove_created(created: list[Path]) -> None:
    for folder in created:  # innermost first; only folders still empty
        try:
            folder.rmdir()
        except OSError:
            pass


def release(target: PathLike, *, keep_parents: bool = True) -> None:
    """Give up one hold of ``target``'s lock; the last one removes the lock file."""
    key = _key(Path(target))
    lock = _HELD.get(key)
    if lock is None:
        return
    lock.count -= 1
    if lock.count > 0:
        return
    del _HELD[key]
    try:
        os.unlink(lock.path)
    except OSError:
        pass
    os.close(lock.fd)
    if not keep_parents:
        _remove_created(lock.created)


def release_all() -> None:
    """Release every lock this process holds (the CLI calls this when a command ends). Parent folders a
    reservation created and nothing was written into are removed again."""
    for key in list(_HELD):
        lock = _HELD[key]
        lock.count = 1
        release(key, keep_parents=False)


def _staging(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{uuid.uuid4().hex[:8]}"


def write_folder(target: PathLike, fill: Callable[[Path], None], *, overwrite: bool = False,
                 what: str = "output folder") -> Path:
    """Let ``fill(staging)`` write a hidden sibling folder, then rename it to ``target``."""
    path = reserve(target, overwrite=overwrite, kind="folder", what=what)
    try:
        staging = _staging(path, "tmp")
        try:
            staging.mkdir()
            fill(staging)
            _move_folder_into_place(staging, path, overwrite=overwrite, what=what)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise OutputError(f"cannot write {path}: {describe_os_error(exc)}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    finally:
        release(path)
    return path


def _move_folder_into_place(staging: Path, path: Path, *, overwrite: bool, what: str) -> None:
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    if not path.is_dir() or path.is_symlink():
        raise OutputError(f"{what} {path} appeared as a non-folder while writing; it was left as it is")
    if not overwrite:
        raise OutputError(f"{what} {path} appeared while writing; it was left as it is (pass --overwrite "
                          f"to replace it)")
    trash = _staging(path, "old")
    os.rename(path, trash)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(trash, path)
        raise
    shutil.rmtree(trash, ignore_errors=True)
    if os.path.lexists(trash):
        logger.warning("could not remove the previous contents of %s, kept in %s", path, trash)


def write_file(target: PathLike, data: Union[str, bytes], *, overwrite: bool = False,
               what: str = "output file") -> Path:
    """Write ``data`` (text as UTF-8) to a hidden sibling, then rename it to ``target``."""
    path = reserve(target, overwrite=overwrite, kind="file", what=what)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        staging = _staging(path, "tmp")
        try:
            with open(staging, "xb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            if not overwrite and os.path.lexists(path):
                raise OutputError(f"{what} {path} appeared while writing; it was left as it is")
            os.replace(staging, path)
        except OSError as exc:
            _unlink(staging)
            raise OutputError(f"cannot write {path}: {describe_os_error(exc)}") from None
        except BaseException:
            _unlink(staging)
            raise
    finally:
        release(path)
    return path


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def held_locks() -> list[str]:
    """The targets this process holds locks on (for tests and debugging)."""
    return sorted(_HELD)


def ensure_folder(folder: PathLike, *, what: str, env: Optional[str] = None) -> Path:
    """``folder`` exists (created if needed) and is a writable folder; else one ``OutputError`` line that
    names the path and, for a folder an environment variable chose, the variable to change."""
    path = Path(folder)
    fix = f"set {env} to a writable folder" if env else "choose a writable folder"
    if os.path.lexists(path) and not path.is_dir():
        raise OutputError(f"{what} {path} is not a folder; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".detox-probe-", dir=str(path))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable: {describe_os_error(exc).split(';')[0]}; {fix}") from None
    return path
