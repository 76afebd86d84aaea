"""Regression tests of the reliability issue's core bugs (B1, B2, B5-B8) and the kill test: interrupted
writes leave the old or the new data, never a mix; the twin follows the model; bad settings are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dgt_interp import Trajectory, capture
from dgt_interp.capturing import CaptureError
from dgt_interp.evaluate import prompt_batch
from dgt_interp.models import build_diffusion
from dgt_interp.trajectory import TrajectoryError

ROOT = Path(__file__).resolve().parents[1]


def ids(*texts):
    return prompt_batch(list(texts))


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_b1_failed_disk_capture_leaves_the_older_save_whole(tiny_diffusion, tmp_path):
    b = ids("12+34=")
    old = capture(tiny_diffusion, b["input_ids"], seed=0, names="blocks.*.hook_resid_post", max_denoising_steps=6)
    d = tmp_path / "traj"
    old.save(d)
    before = tree_bytes(d)

    def boom(t, hook, step):
        if step == 3:
            raise RuntimeError("user hook failed at step 3")

    with pytest.raises(RuntimeError, match="step 3"):
        capture(tiny_diffusion, b["input_ids"], seed=1, names="blocks.*.hook_resid_post", max_denoising_steps=6,
                storage="disk", out_dir=d, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    assert tree_bytes(d) == before
    back = Trajectory.load(d, model=tiny_diffusion)
    assert back.meta["seed"] == 0 and torch.equal(back["blocks.0.hook_resid_post"], old["blocks.0.hook_resid_post"])
    assert [p.name for p in tmp_path.iterdir()] == ["traj"]  # no temporary sibling left behind


def test_b2_save_over_an_older_save_is_all_or_nothing(tiny_diffusion, tmp_path, monkeypatch):
    b = ids("12+34=")
    old = capture(tiny_diffusion, b["input_ids"], seed=0, names="blocks.*.hook_resid_post", max_denoising_steps=4)
    new = capture(tiny_diffusion, b["input_ids"], seed=7, names="blocks.*.hook_resid_post", max_denoising_steps=4)
    d = tmp_path / "t"
    old.save(d)
    before = tree_bytes(d)
    import dgt_interp.trajectory as trajectory

    def die(*a, **k):
        raise KeyboardInterrupt  # dies where the old code had replaced the tensors but not meta.json

    monkeypatch.setattr(trajectory, "write_text", die)
    with pytest.raises(KeyboardInterrupt):
        new.save(d)
    assert tree_bytes(d) == before
    monkeypatch.undo()
    new.save(d)
    back = Trajectory.load(d)
    assert back.meta["seed"] == 7 and torch.equal(back.sequences, new.sequences)


KILL_SCRIPT = r'''
import sys, torch
from dgt_interp import capture
from dgt_interp.evaluate import prompt_batch
from dgt_interp.models import build_diffusion
torch.set_num_threads(1)
model = build_diffusion(seed=0)
b = prompt_batch(["12+34=", "5+6="])
traj = capture(model, b["input_ids"], attention_mask=b["attention_mask"], seed=int(sys.argv[2]),
               names="blocks.*.hook_resid_post", record="processed_logits", max_denoising_steps=8)
print("ready", flush=True)
while True:
    traj.save(sys.argv[1])
'''


def test_kill_during_save_leaves_the_old_or_the_new_trajectory(tiny_diffusion, tmp_path):
    """SIGKILL a process that saves over an older save, at several timings: each time the dir loads as
    exactly the old trajectory or exactly the new one."""
    b = ids("12+34=", "5+6=")
    kw = dict(attention_mask=b["attention_mask"], names="blocks.*.hook_resid_post", record="processed_logits",
              max_denoising_steps=8)
    model = build_diffusion(seed=0)
    old, new = capture(model, b["input_ids"], seed=1, **kw), capture(model, b["input_ids"], seed=2, **kw)
    d = tmp_path / "t"
    script = tmp_path / "saver.py"
    script.write_text(KILL_SCRIPT)
    seen = set()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for delay in (0.0, 0.02, 0.06, 0.15):
        old.save(d)
        proc = subprocess.Popen([sys.executable, str(script), str(d), "2"], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        back = Trajectory.load(d).to_memory()
        which = [name for name, t in (("old", old), ("new", new)) if torch.equal(back.sequences, t.sequences)
                 and all(torch.equal(back[n], t[n]) for n in t.names)]
        assert len(which) == 1, f"kill after {delay}s: the dir is neither the old nor the new trajectory"
        seen.add(which[0])
    assert seen  # which ones appear depends on timing; every one of them was whole


def test_trajectory_load_refuses_corrupt_or_foreign_dirs(run_saved, tiny_diffusion, tmp_path):
    d, traj = run_saved
    meta = json.loads((d / "meta.json").read_text())
    cases = []
    bad = tmp_path / "v99"
    bad.mkdir()
    (bad / "meta.json").write_text(json.dumps(dict(meta, format_version=99)))
    cases.append((bad, "format version 99"))
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    (trunc / "meta.json").write_text((d / "meta.json").read_text()[:40])
    cases.append((trunc, "is corrupt"))
    nokey = tmp_path / "nokey"
    nokey.mkdir()
    (nokey / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "specs"}))
    cases.append((nokey, "lacks 'specs'"))
    for path, needle in cases:
        with pytest.raises(TrajectoryError, match=needle) as e:
            Trajectory.load(path)
        assert "\n" not in str(e.value)
    flipped = tmp_path / "flip"
    traj.save(flipped)
    step = sorted((flipped / "steps").glob("*.safetensors"))[1]
    raw = bytearray(step.read_bytes())
    raw[-5] ^= 0x01
    step.write_bytes(bytes(raw))
    back = Trajectory.load(flipped)
    with pytest.raises(TrajectoryError, match="missing or corrupt"):
        back["blocks.0.hook_resid_post"]
    rec = tmp_path / "rec"
    traj.save(rec)
    raw = bytearray((rec / "records.safetensors").read_bytes())
    raw[-3] ^= 0x01
    (rec / "records.safetensors").write_bytes(bytes(raw))
    with pytest.raises(TrajectoryError, match="records.safetensors"):
        Trajectory.load(rec)
    other = build_diffusion(seed=1)  # the same shapes, other weights
    with pytest.raises(TrajectoryError, match="captured with another model"):
        Trajectory.load(d, model=other)
    Trajectory.load(d, model=tiny_diffusion)  # its own model is accepted


@pytest.fixture(scope="module")
def run_saved(tiny_diffusion, tmp_path_factory):
    b = ids("12+34=", "5+6=")
    traj = capture(tiny_diffusion, b["input_ids"], attention_mask=b["attention_mask"], seed=3,
                   names="blocks.*.hook_resid_post", max_denoising_steps=4)
    d = tmp_path_factory.mktemp("saved") / "t"
    traj.save(d)
    return d, traj


def test_b5_twin_drops_user_hooks_and_follows_model_settings():
    model = build_diffusion(seed=0)
    b = ids("12+34=")
    calls = []
    handle = model.model.decoder.layers[0].register_forward_hook(lambda *a: calls.append(1))
    capture(model, b["input_ids"], seed=0, max_denoising_steps=3)  # the twin is built while the hook is on
    handle.remove()
    calls.clear()
    capture(model, b["input_ids"], seed=0, max_denoising_steps=3)
    assert calls == []  # the removed hook does not fire in capture
    model.final_logit_softcapping = 0.5
    for seed in range(4):
        torch.manual_seed(seed)
        want = model.generate(b["input_ids"], max_denoising_steps=5).sequences
        assert torch.equal(capture(model, b["input_ids"], seed=seed, max_denoising_steps=5).sequences, want), seed


def test_b6_concurrent_captures_on_one_model_are_refused(tiny_diffusion):
    b = ids("12+34=")
    started, release = threading.Event(), threading.Event()

    def slow(t, hook):
        started.set()
        release.wait(30)

    out = {}

    def worker():
        out["traj"] = capture(tiny_diffusion, b["input_ids"], seed=0, max_denoising_steps=2,
                              fwd_hooks=[("blocks.0.hook_resid_post", slow)], hook_steps=0)

    t = threading.Thread(target=worker)
    t.start()
    assert started.wait(60)
    try:
        with pytest.raises(CaptureError, match="another capture"):
            capture(tiny_diffusion, b["input_ids"], seed=0, max_denoising_steps=2, backend="nnsight")
    finally:
        release.set()
        t.join()
    plain = capture(tiny_diffusion, b["input_ids"], seed=0, max_denoising_steps=2)
    assert torch.equal(out["traj"].sequences, plain.sequences)  # the running capture was not disturbed


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.int8, "bfloat16"])
def test_b7_integer_and_bool_storage_dtypes_are_refused(tiny_diffusion, dtype):
    with pytest.raises(CaptureError, match="floating dtype"):
        capture(tiny_diffusion, ids("12+3=")["input_ids"], names="blocks.0.hook_resid_post", dtype=dtype)


@pytest.mark.parametrize("kw, needle", [
    (dict(return_dict_in_generate=False), "capture sets 'return_dict_in_generate'"),
    (dict(t_mni=0.1), "did you mean 't_min'"),
    (dict(entropy_bound=1e-4), "sampler_config"),
    (dict(output_scores=True), "capture sets 'output_scores'"),
])
def test_b8_settings_generate_would_ignore_or_break_on_are_refused_up_front(tiny_diffusion, kw, needle, monkeypatch):
    ran = []
    monkeypatch.setattr(type(tiny_diffusion), "generate", lambda *a, **k: ran.append(1))
    with pytest.raises(CaptureError, match=needle):
        capture(tiny_diffusion, ids("12+3=")["input_ids"], **kw)
    assert ran == []  # refused before any generation


def test_evaluate_refuses_settings_generate_would_drop(tiny_diffusion):
    from dgt_interp.tasks import ADDITION

    with pytest.raises(CaptureError, match="did you mean 't_min'"):
        from dgt_interp.evaluate import evaluate

        evaluate(tiny_diffusion, ADDITION, n=2, t_mni=0.1)


def test_b4_a_death_between_the_renames_of_a_save_cannot_leave_no_model(tmp_path, monkeypatch):
    """The old save moved the model dir aside, then the new one in: killed in between, no model was at
    --out. Now the swap is one step, and no rename ever moves the model dir away."""
    import os as os_module

    from dgt_interp.models import load_model
    from dgt_interp.train import save_atomically

    out = tmp_path / "model"
    model = build_diffusion(seed=0)
    save_atomically(model, out, {"round": 1})
    real_replace, real_rename = os_module.replace, os_module.rename

    def guarded(src, dst, *a, **k):
        if Path(src).resolve() == out.resolve():  # moving the model itself away: the window B4 was about
            raise KeyboardInterrupt("killed between the two renames")
        return (real_rename if guarded.kind == "rename" else real_replace)(src, dst, *a, **k)

    guarded.kind = "replace"
    monkeypatch.setattr(os_module, "replace", guarded)
    monkeypatch.setattr(os_module, "rename", lambda s, d, *a, **k: (setattr(guarded, "kind", "rename"),
                                                                     guarded(s, d, *a, **k))[1])
    save_atomically(build_diffusion(seed=1), out, {"round": 2})
    monkeypatch.undo()
    assert json.loads((out / "recipe.json").read_text())["round"] == 2
    assert load_model(out) is not None


def test_an_interrupted_report_write_leaves_the_previous_report_whole(tmp_path):
    from matplotlib.figure import Figure

    from dgt_interp.studies import Report

    out = tmp_path / "report"
    Report("old", "old text", {"a": Figure()}, {"n": 1}).write(out)
    before = tree_bytes(out)

    class Broken(Figure):
        def savefig(self, *a, **k):
            raise KeyboardInterrupt("killed while saving the second figure")

    with pytest.raises(KeyboardInterrupt):
        Report("new", "new text", {"a": Figure(), "b": Broken()}, {"n": 2}).write(out)
    assert tree_bytes(out) == before and [p.name for p in tmp_path.iterdir()] == ["report"]
