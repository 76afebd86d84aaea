"""Atomic writes: a file or a whole output directory is absent, its old version or the whole new one.

Files: every writer here writes a temporary file in the target's folder, then `os.replace`s it over
the target (atomic within one filesystem). Directories (a saved trajectory, a lens / patch CLI
output, a case-study report, a trained model): `atomic_dir(path)` yields a fresh temporary sibling
to fill, and on success swaps it in place of `path` in one step (`renameat2(RENAME_EXCHANGE)` on
Linux; elsewhere a rename of the old dir aside, then of the new one in); on any exception the
temporary dir is removed and `path` is left as it was. Everything the library writes goes through
these. Files and dirs get the permissions the process umask gives (not the 0600 / 0700 of
`tempfile`).

    >>> write_text("out/summary.json", json.dumps(summary))
    >>> save_tensors("out/patching.safetensors", {"resid_pre": grid})
    >>> with atomic_dir("out/run") as tmp:         # tmp is empty; fill it, the swap happens on exit
    ...     save_figure(tmp / "resid_pre.png", fig)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import save_file

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _libc_renameat2()


def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths (Linux `renameat2(RENAME_EXCHANGE)`); False if unsupported."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: the filesystem cannot exchange
            return False
        raise OSError(err, os.strerror(err), str(b))
    return True


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to produce the file, then move it onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of `path`; on success it replaces `path` whole, in one step.

    If the block raises (or the process dies), `path` keeps its old contents (or stays absent);
    only a hidden `.<name>.*.tmp` sibling may remain after a kill. A `path` that exists and is not
    a directory is refused (`FileExistsError`), nothing written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{str(path)!r} exists and is not a directory; pass a directory path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if not path.exists():
            os.rename(tmp, path)
        elif exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old contents
        else:
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save `tensors` as one safetensors file atomically (tensors made contiguous first)."""
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_figure(path: str | Path, fig, **savefig_kwargs) -> Path:
    """`fig.savefig` to `path` atomically; the format comes from `path`'s suffix (e.g. .png)."""
    fmt = savefig_kwargs.pop("format", Path(path).suffix.lstrip(".") or "png")
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))


__all__ = ["write_atomic", "atomic_dir", "exchange", "write_text", "save_tensors", "save_figure"]
