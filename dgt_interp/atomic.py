"""Atomic file writes: a file is absent, its old version or the whole new one, never half-written.

Every writer here writes a temporary file in the target's folder, then `os.replace`s it over the
target (atomic within one filesystem). If writing fails, the temporary file is removed and the
target is left as it was. Everything the library writes (trajectories, lens results, tuned lenses,
patching and lens CLI outputs, case-study reports) goes through these.

    >>> write_text("out/summary.json", json.dumps(summary))
    >>> save_tensors("out/patching.safetensors", {"resid_pre": grid})
    >>> save_figure("out/resid_pre.png", fig, dpi=90)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file


def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` to produce the file, then move it onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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


__all__ = ["write_atomic", "write_text", "save_tensors", "save_figure"]
