"""Case-study fixtures: one quick run per study per session (shared by the tests that read its report),
and the check that a report re-renders byte for byte from its report.json."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory):
    """`quick_study(name)` -> (Report, out dir) of `run_study(name, quick=True)`, run once per session."""
    cache: dict = {}

    def run(name: str):
        if name not in cache:
            from dgt_interp.studies import run_study

            out = tmp_path_factory.mktemp(f"quick_{name}")
            cache[name] = (run_study(name, out=out, quick=True, progress=False), out)
        return cache[name]

    return run


def assert_rerenders(name: str, out, tmp_path) -> None:
    """The study's renderer on the numbers read back from `out/report.json` gives `out/report.md`'s body,
    and `studies.rerender` rewrites report.md to the same bytes (in a copy of `out`)."""
    from dgt_interp.studies import QUICK_BANNER, get_study, report_text, rerender

    study = get_study(name)
    assert study.render is not None and study.title
    md = (out / "report.md").read_text()
    numbers = json.loads((out / "report.json").read_text())  # NaN -> None, tuples -> lists, keys -> str
    head = f"# {study.title}\n\n" + (f"{QUICK_BANNER}\n\n" if numbers.get("quick") else "")
    assert md.startswith(head)
    body = study.render(numbers).strip() + "\n"
    # the body, then the one line linking the viewer page of an example run (written beside report.md)
    assert md[len(head):].startswith(body) and md == report_text(study.title, study.render(numbers), numbers)
    assert "[viewer.html](viewer.html)" in md[len(head) + len(body):] and (out / "viewer.html").is_file()
    copy = tmp_path / "rerendered"
    shutil.copytree(out, copy)
    (copy / "report.md").write_text("stale")
    rerender(study, copy)
    assert (copy / "report.md").read_bytes() == (out / "report.md").read_bytes()


@pytest.fixture
def check_rerender(tmp_path):
    """`check_rerender(name, out)`: see `assert_rerenders`."""
    return lambda name, out: assert_rerenders(name, out, tmp_path)
