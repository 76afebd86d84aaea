"""The shipped zoo: tiny models trained by `dgt-interp train`, stored as HF dirs in this package.

Each dir loads with plain `transformers` (`from_pretrained`) and records its recipe and held-out
accuracy in `recipe.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from dgt_interp.errors import DgtInterpError

ZOO_DIR = Path(__file__).resolve().parent


class ZooError(DgtInterpError, ValueError):
    """An unknown zoo model (one-line message listing the shipped ones)."""


def names() -> list[str]:
    """Names of the shipped models (dirs holding a config.json)."""
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def path(name: str) -> Path:
    """The dir of zoo model `name`; a one-line error lists the known names."""
    known = names()
    if name not in known:
        raise ZooError(f"unknown zoo model {name!r}; choose one of: {', '.join(known) or '(none shipped)'}")
    return ZOO_DIR / name


def resolve(name_or_dir) -> str:
    """A zoo name becomes its shipped dir; anything else (a dir, a hub id) is returned as given."""
    name = str(name_or_dir)
    return str(path(name)) if name in names() else name


def recipe(name: str) -> dict:
    """The recipe a zoo model was trained with (config, command, seed, accuracies)."""
    f = path(name) / "recipe.json"
    return json.loads(f.read_text()) if f.is_file() else {}


__all__ = ["ZooError", "ZOO_DIR", "names", "path", "resolve", "recipe"]
