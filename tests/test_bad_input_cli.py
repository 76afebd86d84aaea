"""The standing bad-input suite over the CLI (`dgt-interp ...` through `cli.main`): each case exits with
status 2 and one `error: ...` line on stderr (argparse's own usage errors also exit 2 and are counted
apart), no traceback, and nothing written at the output path. Plus the CLI regression tests of the
reliability issue (B3, B9, B10). The API's table is tests/test_bad_input_api.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dgt_interp import zoo
from dgt_interp.cli import main
from dgt_interp.models import ModelLoadError, load_model

ADD = "addition-diffusion"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_bad")
    (root / "a_file").write_text("x")
    (root / "empty_dir").mkdir()
    from dgt_interp.models import TinySize, build_diffusion

    build_diffusion(TinySize(vocab_size=40)).save_pretrained(root / "no_tokenizer")  # weights, no tokenizer files
    broken = root / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"")
    # the viewer's inputs: a saved run of "12+34=", the same run corrupted, patch results of other runs
    from dgt_interp.viz.viewer import view_capture

    traj = view_capture(load_model(ADD), "12+34=", lens=False)
    traj.save(root / "traj")
    traj.save(root / "corrupt_traj")
    data = (root / "corrupt_traj" / "records.safetensors").read_bytes()
    (root / "corrupt_traj" / "records.safetensors").write_bytes(data[:-8] + b"\x00" * 8)
    labels = ["p0:'<bos>'"] + [f"p{i + 1}:{c!r}" for i, c in enumerate("12+34=")]
    for name, steps, prompt in (("patch_other_shape", traj.n_steps + 3, labels), ("patch_other_prompt", traj.n_steps,
                                                                                   labels[:-2] + ["p5:'5'", "p6:'='"])):
        (root / name).mkdir()
        save_file({"resid_pre": torch.zeros(steps, 4, 8), "clean_metric": torch.tensor(1.0),
                   "corrupted_metric": torch.tensor(0.0)}, str(root / name / "patching.safetensors"))
        (root / name / "patching.json").write_text(json.dumps({"clean_tokens": prompt}))
    (root / "patch_corrupt").mkdir()
    (root / "patch_corrupt" / "patching.json").write_text("{not json")
    (root / "patch_corrupt" / "patching.safetensors").write_bytes(b"")
    return root


def _cases(r: Path) -> dict[str, list[str]]:
    out = str(r / "out_never")
    f = str(r / "a_file")
    lens = ["lens", "--model", ADD, "--prompt", "12+34=", "--out", out]
    view = ["view", "--model", ADD, "--prompt", "12+34=", "--out", out]
    patch = ["patch", "--model", ADD, "--clean", "4721+3856=", "--corrupted", "4721+3356=", "--out", out]
    return {
        # models
        "lens: unknown zoo model": ["lens", "--model", "no-such-model", "--prompt", "1+2=", "--out", out],
        "lens: missing model dir": ["lens", "--model", str(r / "nope"), "--prompt", "1+2=", "--out", out],
        "lens: dir without config": ["lens", "--model", str(r / "empty_dir"), "--prompt", "1+2=", "--out", out],
        "lens: corrupt config": ["lens", "--model", str(r / "broken_model"), "--prompt", "1+2=", "--out", out],
        "lens: a file as the model": ["lens", "--model", f, "--prompt", "1+2=", "--out", out],
        "lens: hub id offline": ["lens", "--model", "google/no-such-model", "--prompt", "1+2=", "--out", out],
        "lens: model dir without a tokenizer": ["lens", "--model", str(r / "no_tokenizer"), "--prompt", "1+2=",
                                                "--out", out],
        "patch: model dir without a tokenizer": ["patch", "--model", str(r / "no_tokenizer"), "--clean", "1+2=",
                                                 "--corrupted", "1+3=", "--out", out],
        # the model's tokenizer: --chat needs a chat template (the zoo's character tokenizer has none);
        # prompt tokens + new tokens must fit in max_position_embeddings (128 for the zoo)
        "lens: --chat without a chat template": lens + ["--chat"],
        "patch: --chat without a chat template": patch + ["--chat"],
        "bottleneck: --chat without a chat template": ["bottleneck", "--model", ADD, "--task", "addition", "-n", "2",
                                                       "--chat"],
        "demo: --chat without a chat template": ["demo", "-n", "1", "--study", "none", "--chat"],
        "case-study: --chat without a chat template": ["case-study", "run", "sudoku", "--quick", "--chat", "--out", out],
        "lens: prompt + canvas past max_position_embeddings": ["lens", "--model", ADD, "--prompt", "1" * 121 + "=",
                                                               "--out", out],
        "patch: prompt + canvas past max_position_embeddings": ["patch", "--model", ADD, "--clean", "1" * 121 + "=",
                                                                "--corrupted", "2" * 121 + "=", "--out", out],
        # lens options
        "lens: -k 0": lens + ["-k", "0"],
        "lens: -k -3": lens + ["-k", "-3"],
        "lens: --out is a file": ["lens", "--model", ADD, "--prompt", "12+34=", "--out", f],
        "lens: position 8": lens + ["--position", "8"],
        "lens: position -1": lens + ["--position", "-1"],
        "lens: entropy bound nan": lens + ["--entropy-bound", "nan"],
        "lens: entropy bound inf": lens + ["--entropy-bound", "inf"],
        "lens: entropy bound negative": lens + ["--entropy-bound", "-0.1"],
        "lens: 0 denoising steps": lens + ["--max-denoising-steps", "0"],
        "lens: prompt outside the vocabulary": ["lens", "--model", ADD, "--prompt", "12a+3=", "--out", out],
        "lens: unknown target token": lens + ["--target", "xyz"],
        "lens: tuned and fit-tuned": lens + ["--tuned", str(r), "--fit-tuned", str(r / "t")],
        "lens: missing tuned lens": lens + ["--tuned", str(r / "nope")],
        "lens: fit-tuned onto a file": lens + ["--fit-tuned", f],
        "lens: 0 step buckets": lens + ["--step-buckets", "0"],
        "lens: fit-n 0": lens + ["--fit-n", "0", "--fit-tuned", str(r / "t")],
        "lens: unknown task for fit-tuned": lens + ["--fit-tuned", str(r / "t"), "--task", "nope"],
        "lens: AR twin with an entropy bound": ["lens", "--model", "addition-ar", "--prompt", "1+2=", "--out", out,
                                                "--entropy-bound", "0.1"],
        # patch options
        "patch: different lengths": ["patch", "--model", ADD, "--clean", "12+3=", "--corrupted", "12+345=", "--out", out],
        "patch: same answer": ["patch", "--model", ADD, "--clean", "12+3=", "--corrupted", "12+3=", "--out", out],
        "patch: --out is a file": patch[:-1] + [f],
        "patch: batch size 0": patch + ["--batch-size", "0"],
        "patch: prompt outside the vocabulary": ["patch", "--model", ADD, "--clean", "12a+3=", "--corrupted", "12b+3=",
                                                 "--out", out],
        "patch: unknown metric": patch + ["--metric", "nope"],
        "patch: unknown sweep": patch + ["--sweeps", "nope"],
        "patch: unknown zoo model": ["patch", "--model", "nope", "--clean", "1+2=", "--corrupted", "1+3=", "--out", out],
        # view (the trajectory viewer page); `out` is the page's file path here
        "view: missing trajectory dir": ["view", "--trajectory", str(r / "nope"), "--out", out],
        "view: a file as the trajectory": ["view", "--trajectory", f, "--out", out],
        "view: corrupt trajectory": ["view", "--trajectory", str(r / "corrupt_traj"), "--out", out],
        "view: trajectory of another model": ["view", "--trajectory", str(r / "traj"), "--model", "addition-ar",
                                              "--out", out],
        "view: patching of another run (shapes)": view + ["--patching", str(r / "patch_other_shape")],
        "view: patching of another prompt": view + ["--patching", str(r / "patch_other_prompt")],
        "view: corrupt patching dir": view + ["--patching", str(r / "patch_corrupt")],
        "view: missing patching dir": view + ["--patching", str(r / "nope")],
        "view: out in a missing directory": view[:-1] + [str(r / "no_such_dir" / "run.html")],
        "view: out is a directory": view[:-1] + [str(r / "empty_dir")],
        "view: neither prompt nor trajectory": ["view", "--model", ADD, "--out", out],
        "view: prompt and trajectory": view + ["--trajectory", str(r / "traj")],
        "view: prompt without a model": ["view", "--prompt", "12+34=", "--out", out],
        "view: -k 0": view + ["-k", "0"],
        "view: --chat on a saved trajectory": ["view", "--trajectory", str(r / "traj"), "--out", out, "--chat"],
        "view: --chat without a chat template": view + ["--chat"],
        "view: AR twin with an entropy bound": ["view", "--model", "addition-ar", "--prompt", "1+2=", "--out", out,
                                                "--entropy-bound", "0.1"],
        "view: attention on the AR twin": ["view", "--model", "addition-ar", "--prompt", "1+2=", "--out", out,
                                           "--attention"],
        "view: unknown backend": view + ["--backend", "nope"],
        # bottleneck
        "bottleneck: -n 0": ["bottleneck", "--model", ADD, "--task", "addition", "-n", "0"],
        "bottleneck: -n -5": ["bottleneck", "--model", ADD, "--task", "addition", "-n", "-5"],
        "bottleneck: unknown task": ["bottleneck", "--model", ADD, "--task", "nope"],
        "bottleneck: unknown variant": ["bottleneck", "--model", ADD, "--task", "addition", "--variants", "top-x"],
        "bottleneck: top-0": ["bottleneck", "--model", ADD, "--task", "addition", "--variants", "top-0"],
        "bottleneck: top-p=2": ["bottleneck", "--model", ADD, "--task", "addition", "--variants", "top-p=2"],
        "bottleneck: unknown sampler": ["bottleneck", "--model", ADD, "--task", "addition", "--samplers", "fast"],
        "bottleneck: on the AR twin": ["bottleneck", "--model", "addition-ar", "--task", "addition", "-n", "4"],
        # depth
        "depth: unknown preset": ["depth", "--preset", "nope"],
        "depth: --steps -3": ["depth", "--preset", "diffusiongemma-tiny", "--steps", "-3"],
        "depth: --steps 0": ["depth", "--preset", "diffusiongemma-tiny", "--steps", "0"],
        "depth: --canvas 0": ["depth", "--preset", "diffusiongemma-tiny", "--canvas", "0"],
        "depth: --prompt-len 0": ["depth", "--preset", "diffusiongemma-tiny", "--prompt-len", "0"],
        "depth: two diffusion presets": ["depth", "--preset", "diffusiongemma-tiny", "--vs", "diffusiongemma-tiny"],
        "depth: unknown --vs": ["depth", "--preset", "diffusiongemma-tiny", "--vs", "nope"],
        # case studies
        "case-study: unknown study": ["case-study", "run", "nope", "--out", out],
        "case-study: missing study file": ["case-study", "run", str(r / "nope.py"), "--out", out],
        "case-study: unknown model": ["case-study", "run", "sudoku", "--model", "nope", "--quick", "--out", out],
        "case-study: render without report.json": ["case-study", "render", "sudoku", str(r / "empty_dir")],
        "case-study: render an unknown study": ["case-study", "render", "nope", str(r)],
        # train
        "train: unknown task": ["train", "--task", "nope", "--kind", "diffusion", "--out", out],
        "train: init from a missing dir": ["train", "--task", "addition", "--kind", "diffusion", "--out", out,
                                           "--init-from", str(r / "nope"), "--steps", "1"],
        "train: unknown mix": ["train", "--task", "addition", "--kind", "diffusion", "--out", out, "--mix", "nope",
                               "--steps", "1"],
        # demo
        "demo: unknown model": ["demo", "--model", "nope", "--study", "none"],
        "demo: unknown study": ["demo", "-n", "1", "--study", "nope", "--out", out],
    }


USAGE = {  # argparse refuses these itself (exit 2, a usage line and an error line)
    "lens: -k not an int": ["lens", "--model", ADD, "--prompt", "1+2=", "--out", "o", "-k", "two"],
    "lens: position not an int": ["lens", "--model", ADD, "--prompt", "1+2=", "--out", "o", "--position", "1.5"],
    "depth: unknown rules": ["depth", "--preset", "diffusiongemma-tiny", "--rules", "nope"],
    "train: unknown kind": ["train", "--task", "addition", "--kind", "nope", "--out", "o"],
    "no command": [],
    "unknown command": ["nope"],
    "lens: missing --prompt": ["lens", "--model", ADD, "--out", "o"],
}


@pytest.mark.parametrize("name", list(_cases(Path("/x"))))
def test_bad_cli_input_is_one_error_line_exit_2(name, paths, capsys):
    argv = _cases(paths)[name]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    assert not (paths / "out_never").exists()  # nothing written at the output path
    assert not list(paths.glob(".out_never.*"))  # nor a temporary sibling left behind


@pytest.mark.parametrize("name", list(USAGE))
def test_usage_errors_exit_2(name, capsys):
    with pytest.raises(SystemExit) as e:
        main(USAGE[name])
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_cli_suite_with_the_api_suite_holds_150_cases():
    from tests.test_bad_input_api import CASES, PASSES

    assert len(_cases(Path("/x"))) + len(USAGE) + len(CASES) + len(PASSES) >= 150


# ------------------------------------------------------------------------------------- regressions


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_b3_a_failed_lens_rerun_leaves_the_old_output_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "lens"
    assert main(["lens", "--model", ADD, "--prompt", "12+34=", "--out", str(out), "--max-denoising-steps", "3"]) == 0
    before = _tree(out)
    import dgt_interp.lens_report as lens_report

    def killed(*a, **k):
        raise KeyboardInterrupt  # dies where the old code had written the new tensors but not summary.json

    monkeypatch.setattr(lens_report, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["lens", "--model", ADD, "--prompt", "5+6=", "--out", str(out), "--max-denoising-steps", "3"])
    assert _tree(out) == before
    assert json.loads((out / "summary.json").read_text())["prompt"] == "12+34="
    assert [p.name for p in tmp_path.iterdir()] == ["lens"]


@pytest.mark.parametrize("argv, needle", [
    (["lens", "--model", ADD, "--prompt", "12+34=", "-k", "0"], "-k 0"),
    (["bottleneck", "--model", ADD, "--task", "addition", "-n", "0"], "-n 0"),
])
def test_b9_zero_counts_are_one_line_errors(argv, needle, tmp_path, capsys):
    if argv[0] == "lens":
        argv = argv + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_b9_out_onto_an_existing_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("keep me")
    assert main(["lens", "--model", ADD, "--prompt", "12+34=", "--out", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err and f.read_text() == "keep me"


def test_b10_a_checkpoint_with_a_missing_tensor_is_refused(tmp_path, capsys):
    src = zoo.path(ADD)
    d = tmp_path / "incomplete"
    d.mkdir()
    for p in src.iterdir():
        if p.is_file() and p.name != "model.safetensors":
            (d / p.name).write_bytes(p.read_bytes())
    weights = load_file(str(src / "model.safetensors"))
    dropped = next(k for k in weights if "decoder.layers.1" in k or "layers.1." in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing") as e:
        load_model(d)
    assert "\n" not in str(e.value)
    assert main(["lens", "--model", str(d), "--prompt", "12+34=", "--out", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert load_model(ADD) is not None  # the complete dir still loads


def test_written_files_and_dirs_follow_the_umask(tmp_path):
    import os

    from dgt_interp.atomic import atomic_dir, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_dir(tmp_path / "d") as t:
            write_text(t / "g.txt", "y")
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.txt").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == oct(0o755)
    assert oct((tmp_path / "d" / "g.txt").stat().st_mode & 0o777) == oct(0o644)
