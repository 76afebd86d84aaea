"""CLI conveniences: --threads on every analysis command (applied before the command runs), shown in --help."""

from __future__ import annotations

import re

import pytest
import torch

from dgt_interp.cli import build_parser, main

ANALYSES = [["lens"], ["patch"], ["bottleneck"], ["demo"], ["case-study", "run"]]


@pytest.mark.parametrize("cmd", ANALYSES, ids=lambda c: " ".join(c))
def test_threads_in_help_with_its_default(cmd, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*cmd, "--help"])
    out = capsys.readouterr().out
    assert "--threads THREADS" in out and "default: torch's own choice" in " ".join(out.split())
    assert "(default: None)" not in out and "(default: False)" not in out  # nothing to show is not shown


def test_help_shows_each_default_once():
    """Regression: `--help` said "(default: the study's) (default: None)" and showed no default for --seed."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("patch", "train", "lens"):
        text = " ".join(sub.choices[name].format_help().split())
        assert "--seed SEED (default: 0)" in text, name
        assert "(default: None)" not in text and "(default: False)" not in text
        assert not re.search(r"default[^-]*\(default:", text), name  # never a second default after the first
    patch = " ".join(sub.choices["patch"].format_help().split())
    assert "--batch-size BATCH_SIZE patched copies per generate (default: 64)" in patch
    assert "(default: logit_diff)" in patch and "--warmup WARMUP (default: 100)" in " ".join(
        sub.choices["train"].format_help().split())
    run = " ".join(sub.choices["case-study"]._actions[-1].choices["run"].format_help().split())
    assert "(default: the study's)" in run and "(default: the study's) (default" not in run


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
