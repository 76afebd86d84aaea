"""Atomic writes: a failed write leaves the old file and no temporary file; a good one replaces it whole."""

from __future__ import annotations

import pytest
import torch
from matplotlib.figure import Figure
from safetensors.torch import load_file

from dgt_interp.atomic import save_figure, save_tensors, write_atomic, write_text


def test_writes_replace_whole_files(tmp_path):
    path = write_text(tmp_path / "sub" / "a.json", "{}")  # creates the folder
    assert path.read_text() == "{}"
    write_text(path, '{"v": 2}')
    assert path.read_text() == '{"v": 2}'
    t = save_tensors(tmp_path / "t.safetensors", {"x": torch.arange(6.0).view(2, 3).T}, metadata={"k": "v"})
    torch.testing.assert_close(load_file(t)["x"], torch.arange(6.0).view(2, 3).T)
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    assert save_figure(tmp_path / "f.png", fig, dpi=50).read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.rglob(".*")]


def test_failed_write_leaves_the_old_file(tmp_path):
    path = write_text(tmp_path / "a.txt", "old")

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
