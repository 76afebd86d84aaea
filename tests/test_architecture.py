"""The architecture holds: imports point down the layers (import-linter contract in pyproject.toml),
no module imports another module's private (underscore) name, the library never imports the
case-study application, and the top-level API lists what it exports."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _python_files(*packages: str) -> list[Path]:
    return sorted(p for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(cwd))
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contract_holds():
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "1 kept, 0 broken" in res.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_contract_fails_on_an_upward_import(tmp_path):
    for pkg in ("dgt_interp", "case_studies"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("*.safetensors", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    core = tmp_path / "dgt_interp" / "trajectory.py"
    core.write_text(core.read_text() + "\nimport dgt_interp.lens  # core importing analysis: upward\n")
    res = _lint(tmp_path)
    assert res.returncode != 0 and "BROKEN" in res.stdout
    assert "dgt_interp.trajectory -> dgt_interp.lens" in res.stdout


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for path in _python_files("dgt_interp", "case_studies", "bench"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("dgt_interp", "case_studies"):
                offenders += [f"{path.relative_to(ROOT)}: from {node.module} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            elif isinstance(node, ast.ImportFrom) and node.level:  # relative imports inside a package
                offenders += [f"{path.relative_to(ROOT)}: from .{node.module or ''} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, "\n".join(offenders)


def test_the_library_never_imports_case_studies():
    hits = []
    for path in _python_files("dgt_interp"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            hits += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "case_studies"]
    assert not hits, "\n".join(hits)


def test_public_api_is_listed_and_importable():
    import dgt_interp
    from dgt_interp import LogitLens, Patching, Trajectory, capture  # the acceptance line of the architecture issue

    listed = dir(dgt_interp)
    for name in ("capture", "Trajectory", "Patching", "LogitLens", "TunedLens", "Site", "attribution_patch",
                 "detect_phenomena", "register_probe", "ReplayedNoise", "load_model", "load_tokenizer",
                 "DgtInterpError", "CaseStudy", "serial_depth"):
        assert name in listed and name in dgt_interp.__all__
        assert getattr(dgt_interp, name) is not None
    assert capture.__module__ == "dgt_interp.capturing" and Trajectory.__module__ == "dgt_interp.trajectory"
    assert Patching.__module__ == "dgt_interp.patching.experiment" and LogitLens.__module__ == "dgt_interp.lens"
    with pytest.raises(AttributeError):
        dgt_interp.no_such_name  # noqa: B018


def test_every_project_error_shares_one_base():
    import inspect

    import dgt_interp
    from dgt_interp.errors import DgtInterpError

    modules = ["capturing", "trajectory", "names", "sampling", "selection", "stats", "tokenizer", "lens", "patching",
               "phenomena", "causal", "models.load"]
    errors = []
    for m in modules:
        mod = __import__(f"dgt_interp.{m}", fromlist=["x"])
        errors += [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(obj, Exception) and obj.__module__.startswith("dgt_interp")]
    assert len(errors) >= 10
    assert all(issubclass(e, DgtInterpError) for e in errors), [e for e in errors if not issubclass(e, DgtInterpError)]
    assert dgt_interp.DgtInterpError is DgtInterpError
