"""Logit lens and tuned lens: exactness at the last layer, compact outputs, training, save/load, CLI."""

from __future__ import annotations

import math

import pytest
import torch

from dgt_interp.tokenizer import load_tokenizer
from dgt_interp.lens import (
    LensError,
    LensResult,
    LogitLens,
    TunedLens,
    compact_outputs,
    format_kl_table,
    lens_capture,
)

PROMPTS = ["12+34=", "5+6="]


@pytest.fixture(scope="module")
def diff_traj(tiny_diffusion):
    """Two prompts (left-padded), 3 denoising steps, with the model's raw and processed logits."""
    return lens_capture(tiny_diffusion, PROMPTS, seed=0, record=["logits", "processed_logits"], max_denoising_steps=3)


@pytest.fixture(scope="module")
def ar_traj(tiny_ar):
    return lens_capture(tiny_ar, ["12+34="], seed=0, record=["logits"], max_new_tokens=4)


# ---- compact outputs against hand-computed values ----------------------------------------------


def test_compact_outputs_hand_computed():
    q = torch.tensor([[0.5, 0.25, 0.25]])
    f = torch.tensor([[1 / 3, 1 / 3, 1 / 3]])
    out = compact_outputs(q.log() + 7.0, f.log() - 2.0, k=2, targets=[2, 0])  # shifts do not change softmax
    kl = sum(1 / 3 * math.log((1 / 3) / qi) for qi in (0.5, 0.25, 0.25))
    ent = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert out["kl_to_final"].item() == pytest.approx(kl, abs=1e-6)
    assert out["entropy"].item() == pytest.approx(ent, abs=1e-6)
    assert out["top_ids"][0, 0].item() == 0 and out["top_probs"][0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert out["target_probs"][0].tolist() == pytest.approx([0.25, 0.5], abs=1e-6)
    same = compact_outputs(f.log(), f.log())
    assert same["kl_to_final"].item() == pytest.approx(0.0, abs=1e-7)


def test_kl_table_averages_only_valid_entries():
    kl = torch.tensor([1.0, 3.0, 100.0]).reshape(1, 1, 1, 3)  # [S, Ly, B, P]
    valid = torch.tensor([[[True, True, False]]])
    res = LensResult("logit", [0], [0], [0, 1, 2], [], torch.zeros(1, 1, 1, 3, 1, dtype=torch.long),
                     torch.zeros(1, 1, 1, 3, 1), torch.zeros(1, 1, 1, 3), kl, torch.zeros(1, 1, 1, 3, 0), valid)
    assert res.kl_table().tolist() == [[2.0]]


# ---- the acceptance: last layer == the model's own logits at every step -------------------------


def test_last_layer_logit_lens_equals_model_logits_every_step(tiny_diffusion, diff_traj):
    lens = LogitLens(tiny_diffusion)
    resid = diff_traj.stack("blocks.*.hook_resid_post")  # [R, layer, B, P, d]
    last = lens.logits(resid[:, -1], lens.n_layers - 1)  # [R, B, P, V]
    raw = diff_traj["logits"]  # the decoder's soft-capped logits, before the temperature schedule
    assert diff_traj.n_steps == 3 and last.shape == raw.shape
    assert (last - raw).abs().max().item() <= 1e-5
    # the processed logits the sampler sees are these divided by the step's temperature
    cfg = tiny_diffusion.generation_config
    temp = cfg.t_min + (cfg.t_max - cfg.t_min) * diff_traj.cur_step.float() / 3
    proc = diff_traj["processed_logits"]
    finite = proc.isfinite()
    assert torch.allclose((last / temp[:, None, None, None])[finite], proc[finite], atol=1e-5)
    res = lens.run(diff_traj, k=3)
    assert res.kl_to_final[:, -1].abs().max().item() == 0.0
    assert torch.equal(res.top_ids[:, -1], raw.topk(3, dim=-1).indices)


def test_last_layer_matches_an_independent_forward(tiny_diffusion):
    """Recompute step 1 with the model's own forward (prompt, input canvas, previous processed logits)."""
    from dgt_interp.evaluate import prompt_batch

    traj = lens_capture(tiny_diffusion, ["12+34="], seed=1, record=["processed_logits"], max_denoising_steps=2)
    ids = prompt_batch(["12+34="])["input_ids"]
    with torch.no_grad():
        out = tiny_diffusion(input_ids=ids, decoder_input_ids=traj.input_canvas[1],
                             self_conditioning_logits=traj["processed_logits"][0])
    lens = LogitLens(tiny_diffusion)
    last = lens.logits(traj["blocks.3.hook_resid_post"][1], 3)
    assert (last - out.logits).abs().max().item() <= 1e-5


def test_ar_twin_runs_unchanged(tiny_ar, ar_traj):
    lens = LogitLens(tiny_ar)
    last = lens.logits(ar_traj.stack("blocks.*.hook_resid_post")[:, -1], lens.n_layers - 1)
    assert (last - ar_traj["logits"]).abs().max().item() <= 1e-5
    res = lens.run(ar_traj, targets=[3])
    s, b, p = res.valid.shape
    assert res.top_ids.shape == (s, 4, b, p, 5)
    assert torch.equal(res.valid[:, 0], torch.tril(torch.ones(s, p, dtype=torch.bool)))  # p <= step
    table = res.kl_table()
    assert table.shape == (s, 4) and torch.isfinite(table).all() and table[:, -1].abs().max() == 0
    assert (table[:, :-1] > 0).all()


# ---- selections, chunking, errors --------------------------------------------------------------


def test_selection_and_chunking_do_not_change_values(tiny_diffusion, diff_traj):
    lens = LogitLens(tiny_diffusion)
    full = lens.run(diff_traj, targets=[3, 5])
    tiny_chunks = lens.run(diff_traj, targets=[3, 5], chunk_elements=1)  # one row at a time
    for name in ("top_ids", "top_probs", "entropy", "kl_to_final", "target_probs"):
        assert torch.allclose(getattr(full, name).float(), getattr(tiny_chunks, name).float(), atol=1e-6)
    part = lens.run(diff_traj, steps=[2], layers=slice(1, 3), positions=[4, 6], targets=[5])
    assert part.steps == [2] and part.layers == [1, 2] and part.positions == [4, 6]
    # Another selection decodes other row chunks, so float32 softmax reductions run in another order;
    # KL, a difference of nearly equal log-probabilities, turns that into ~1e-4 relative (5.5e-5 seen).
    assert torch.allclose(part.kl_to_final, full.kl_to_final[2:3, 1:3][:, :, :, [4, 6]], rtol=1e-3, atol=1e-6)
    assert torch.allclose(part.target_probs[..., 0], full.target_probs[2:3, 1:3][:, :, :, [4, 6], 1], rtol=1e-4,
                          atol=1e-7)


def test_one_line_errors(tiny_diffusion, tiny_ar, diff_traj):
    lens = LogitLens(tiny_diffusion)
    cases = [
        (lambda: lens.run(diff_traj, layers=[4]), "layer 4"),
        (lambda: lens.run(diff_traj, positions=[8]), "position 8"),
        (lambda: lens.run(diff_traj, steps=[7]), "step 7"),
        (lambda: lens.run(diff_traj, targets=[10**6]), "target token id"),
        (lambda: lens.logits(torch.zeros(2, 128), 9), "out of range"),
        (lambda: LogitLens(tiny_ar).run(diff_traj), "build the lens from the model"),
        (lambda: TunedLens(tiny_diffusion, step_buckets=0), "step_buckets"),
    ]
    for fn, needle in cases:
        with pytest.raises(LensError) as e:
            fn()
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TypeError, match="DiffusionGemmaForBlockDiffusion"):
        LogitLens(torch.nn.Linear(2, 2))


def test_step_in_canvas_restarts_per_canvas(diff_traj):
    assert diff_traj.step_in_canvas().tolist() == [0, 1, 2]


# ---- tuned lens --------------------------------------------------------------------------------


def test_tuned_lens_starts_as_logit_lens_and_training_reduces_heldout_kl(tiny_diffusion, diff_traj):
    tuned = TunedLens(tiny_diffusion)
    logit_res = LogitLens(tiny_diffusion).run(diff_traj)
    assert torch.allclose(tuned.run(diff_traj).kl_to_final, logit_res.kl_to_final, atol=1e-6)  # identity at init
    from dgt_interp.tasks import ADDITION

    prompts = [p.prompt for p in ADDITION.problems("train", 24, seed=0)]
    assert not set(prompts) & set(PROMPTS)
    train = lens_capture(tiny_diffusion, prompts, seed=3, max_denoising_steps=3)
    losses = tuned.fit(train, iters=60, lr=3e-3, seed=0)
    assert losses[-1] < 0.5 * losses[0]
    held = tuned.run(diff_traj)  # prompts not trained on
    assert held.kl_table()[:, :-1].mean() < 0.8 * logit_res.kl_table()[:, :-1].mean()
    assert held.kl_to_final[:, -1].abs().max() == 0  # last layer: no translator, the model's output
    print("\n" + format_kl_table(logit_res, held))


def test_tuned_lens_save_load_roundtrip_and_seeded_training(tiny_diffusion, tiny_ar, diff_traj, tmp_path):
    a = TunedLens(tiny_diffusion, step_buckets=2)
    a.fit(diff_traj, iters=5, lr=1e-2, seed=7)
    b = TunedLens(tiny_diffusion, step_buckets=2)
    b.fit(diff_traj, iters=5, lr=1e-2, seed=7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)  # same data + seed -> same lens
    assert not torch.equal(a.weight[0], a.weight[1])  # buckets train separately
    a.save(tmp_path / "tl")
    c = TunedLens.load(tmp_path / "tl", tiny_diffusion)
    assert c.step_buckets == 2 and torch.equal(c.weight, a.weight) and torch.equal(c.bias, a.bias)
    assert torch.equal(c.run(diff_traj).kl_to_final, a.run(diff_traj).kl_to_final)
    assert c.training_info["seed"] == 7
    with pytest.raises(LensError, match="model_class"):
        TunedLens.load(tmp_path / "tl", tiny_ar)
    with pytest.raises(LensError, match="holds no tuned lens"):
        TunedLens.load(tmp_path / "nothing", tiny_diffusion)


def test_step_buckets_route_rows_to_their_translator(tiny_diffusion):
    lens = TunedLens(tiny_diffusion, step_buckets=3)
    with torch.no_grad():
        lens.weight.normal_(std=0.05)
        lens.bias.normal_(std=0.05)
    h = torch.randn(5, 128)
    steps = torch.tensor([0, 4, 1, 2, 0])
    together = lens.translate(h, 1, steps)
    one_by_one = torch.stack([lens.translate(h[i:i + 1], 1, int(s))[0] for i, s in enumerate(steps)])
    assert torch.allclose(together, one_by_one, atol=1e-6)
    assert lens.bucket(4) == 2 and torch.equal(lens.translate(h, 3, steps), h)


def test_lens_result_save_load_equal(tiny_diffusion, diff_traj, tmp_path):
    res = LogitLens(tiny_diffusion).run(diff_traj, targets=[4])
    back = LensResult.load(res.save(tmp_path / "r.safetensors"))
    assert back.steps == res.steps and back.targets == [4] and back.lens == "logit"
    for name in ("top_ids", "top_probs", "entropy", "kl_to_final", "target_probs", "valid"):
        assert torch.equal(getattr(back, name), getattr(res, name))


def test_zoo_tuned_lens_beats_logit_lens_on_heldout(addition_diffusion):
    from dgt_interp.lens_report import fit_tuned_lens
    from dgt_interp.tasks import ADDITION

    _, report = fit_tuned_lens(addition_diffusion, ADDITION, n=32, iters=100, seed=0, max_denoising_steps=6)
    logit, tuned = (torch.tensor(report[k], dtype=torch.float).nan_to_num(0.0) for k in ("logit", "tuned"))
    inner = slice(0, logit.shape[1] - 1)
    assert tuned[:, inner].nanmean() < logit[:, inner].nanmean()
    print("\n" + report["text"])


def test_zoo_last_layer_exact(addition_diffusion, addition_ar):
    for model in (addition_diffusion, addition_ar):
        traj = lens_capture(model, ["1234+5678="], record=["logits"])
        lens = LogitLens(model)
        last = lens.logits(traj.stack("blocks.*.hook_resid_post")[:, -1], lens.n_layers - 1)
        assert (last - traj["logits"]).abs().max().item() <= 1e-5


# ---- CLI ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tiny_diffusion, tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_diffusion")
    tiny_diffusion.save_pretrained(d)
    load_tokenizer(tiny_diffusion).save_pretrained(d)  # a model dir ships its tokenizer
    return d


def test_cli_lens_writes_pngs_and_tensors(tiny_dir, tmp_path, capsys):
    import json

    from dgt_interp.cli import main

    out, tl = tmp_path / "out", tmp_path / "tl"
    rc = main(["lens", "--model", str(tiny_dir), "--prompt", "12+34=", "--position", "1", "--target", "7",
               "--out", str(out), "--max-denoising-steps", "2", "--fit-tuned", str(tl), "--task", "addition",
               "--fit-n", "4", "--fit-iters", "3"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_layer_max_abs_diff"] <= 1e-5 and summary["target"] == "7"
    for f in ("logit_target.png", "tuned_target.png", "logit_kl.png", "tuned_kl.png", "canvas.png", "commit.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = LensResult.load(out / "lens_tuned.safetensors")
    assert res.lens == "tuned" and res.targets == [summary["target_id"]]
    assert (tl / "tuned_lens.json").is_file()
    # reuse the saved tuned lens
    assert main(["lens", "--model", str(tiny_dir), "--prompt", "12+34=", "--out", str(tmp_path / "o2"),
                 "--tuned", str(tl), "--max-denoising-steps", "2"]) == 0


@pytest.mark.parametrize("extra, needle", [
    (["--position", "8"], "position 8 is out of range"),
    (["--target", "xyz"], "unknown target token"),
    (["--tuned", "/nonexistent"], "holds no tuned lens"),
])
def test_cli_lens_bad_input_is_one_line_exit_2(tiny_dir, tmp_path, capsys, extra, needle):
    from dgt_interp.cli import main

    rc = main(["lens", "--model", str(tiny_dir), "--prompt", "1+2=", "--out", str(tmp_path / "o"),
               "--max-denoising-steps", "1", *extra])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (HF may print a weight-loading bar before)
    assert rc == 2 and last.startswith("error: ") and needle in last
