"""CLI conveniences: --threads on every analysis command (applied before the command runs), shown in --help."""

from __future__ import annotations

import pytest
import torch

from dgt_interp.cli import build_parser, main

ANALYSES = [["lens"], ["patch"], ["bottleneck"], ["demo"], ["case-study", "run"]]


@pytest.mark.parametrize("cmd", ANALYSES, ids=lambda c: " ".join(c))
def test_threads_in_help_with_its_default(cmd, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*cmd, "--help"])
    out = capsys.readouterr().out
    assert "--threads THREADS" in out and "(default: None)" in out


def test_threads_set_before_the_command_and_refused_below_one(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        # the model does not exist: the command fails after --threads took effect
        rc = main(["lens", "--model", str(tmp_path / "none"), "--prompt", "1+2=", "--out", str(tmp_path / "o"),
                   "--threads", "2"])
        assert rc == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert main(["patch", "--model", "x", "--clean", "1", "--corrupted", "2", "--out", str(tmp_path / "p"),
                 "--threads", "0"]) == 2
    assert "--threads 0 must be an int >= 1" in capsys.readouterr().err
