"""Folders that appear whole: a unique temporary folder beside the target, then one rename.

Two dashboard sessions share one process id, so a temporary folder named by the process id
alone is shared by two writers; here every writer gets its own (``tempfile.mkdtemp``). The
finished folder is put in place without a moment where the target is missing:

* a target that does not exist yet is created by one ``rename``; when another writer got
  there first, its (equally complete) folder is kept and ours is deleted;
* an existing target is exchanged with the new folder in one step (Linux ``renameat2``
  with ``RENAME_EXCHANGE``), then the old contents are deleted. Where the exchange is not
  available, the old folder is moved aside and the new one moved in (two renames).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["exchange_dirs", "new_temp_dir", "normalize_modes", "place_dir"]

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def new_temp_dir(target: Path) -> Path:
    """An empty folder beside ``target``, unique to this call (not only to this process)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
    return tmp


def _umask() -> int:
    mask = os.umask(0o022)  # read once, at import
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def normalize_modes(folder: Path) -> None:
    """Give every file and folder under ``folder`` the mode an ordinary ``open`` / ``mkdir``
    gives (safetensors and mkstemp write private 0600 files)."""
    os.chmod(folder, DIR_MODE)
    for path in folder.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def _renameat2():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange_dirs(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step; False where the system cannot (then nothing changed)."""
    function = _renameat2()
    if function is None:
        return False
    result = function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def place_dir(tmp: Path, target: Path, replace: bool) -> Path:
    """Move the finished ``tmp`` to ``target``; returns ``target``.

    ``replace=False``: a target that exists already (another writer finished first) is
    kept and ``tmp`` deleted. ``replace=True``: the target's old contents give way to
    ``tmp``'s, readers seeing the old folder or the new one, never none (see the module).
    """
    normalize_modes(tmp)
    try:
        os.rename(tmp, target)
        return target
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if not replace:
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if exchange_dirs(tmp, target):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old contents
        return target
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-{os.getpid()}-"))
    os.rmdir(old)
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
