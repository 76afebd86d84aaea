"""Training smoke tests: a few steps of each objective, saved atomically with its recipe."""

import json

import pytest
import torch

from dgt_interp.cli import main
from dgt_interp.models import TinySize, load_model
from dgt_interp.tasks import ADDITION, SORT
from dgt_interp.train import TrainConfig, canvas_targets, diffusion_loss, train

SMALL = TinySize(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 head_dim=16, moe_intermediate_size=16, intermediate_size=32)


def test_canvas_targets_are_answer_eos_pad():
    probs = [ADDITION.problems("train", 1)[0]]
    row = canvas_targets(probs, 8)[0].tolist()
    n = len(probs[0].answer)
    assert row[n] == 1 and all(x == 0 for x in row[n + 1:])
    with pytest.raises(ValueError, match="does not fit"):
        canvas_targets(probs, n)


def test_self_conditioning_is_trained_through_the_second_pass():
    from dgt_interp.models import build_diffusion

    model = build_diffusion(SMALL).train()
    cfg = TrainConfig(size=SMALL, self_cond_prob=1.0)
    loss = diffusion_loss(model, SORT.problems("train", 16), torch.Generator().manual_seed(0), cfg)
    loss.backward()
    grad = model.model.decoder.self_conditioning.gate_proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad()
    cfg0 = TrainConfig(size=SMALL, self_cond_prob=0.0)
    diffusion_loss(model, SORT.problems("train", 16), torch.Generator().manual_seed(0), cfg0).backward()
    grad0 = model.model.decoder.self_conditioning.gate_proj.weight.grad
    assert grad0 is None or grad0.abs().sum() == 0


@pytest.mark.parametrize("kind", ["diffusion", "ar"])
def test_few_steps_reduce_loss_and_save_a_loadable_dir(tmp_path, kind):
    cfg = TrainConfig(task="sort", kind=kind, steps=30, batch_size=32, warmup=5, size=SMALL, eval_n=4, lr=3e-3)
    model, recipe = train(cfg, tmp_path / kind, progress=False, command="test")
    saved = json.loads((tmp_path / kind / "recipe.json").read_text())
    assert saved["train_config"]["steps"] == 30 and saved["command"] == "test"
    assert 0.0 <= saved["heldout_exact_match"]["accuracy"] <= 1.0
    assert saved["heldout_exact_match"]["n"] == 4
    if kind == "diffusion":
        assert "heldout_exact_match_self_conditioning_zeroed" in saved
    reloaded = load_model(tmp_path / kind)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    assert recipe["final_loss"] < 3.2  # ln(32) = 3.47 at random init


def test_cli_train_smoke_and_errors(tmp_path, capsys):
    out = tmp_path / "m"
    rc = main(["train", "--task", "addition", "--kind", "ar", "--steps", "2", "--batch-size", "8",
               "--hidden", "32", "--layers", "1", "--eval-n", "0", "--out", str(out), "--quiet"])
    assert rc == 0 and (out / "model.safetensors").is_file()
    assert "saved" in capsys.readouterr().out
    rc = main(["train", "--task", "division", "--kind", "ar", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "error: unknown task 'division'; choose one of: addition, compose, compose_odd, count, dedupe, hinted_addition, hop_chain, long_addition, sort, sudoku, suffix_sum"
    assert not (tmp_path / "x").exists()


def test_continue_training_records_its_parent_and_mix(tmp_path):
    first = tmp_path / "first"
    train(TrainConfig(task="addition", kind="ar", steps=2, batch_size=8, size=SMALL, eval_n=0), first,
          progress=False, command="first")
    _, recipe = train(TrainConfig(task="addition", kind="ar", steps=2, batch_size=8, eval_n=0, mix="unequal",
                                  init_from=str(first)), tmp_path / "second", progress=False, command="second")
    assert recipe["parent_recipe"]["command"] == "first"
    assert recipe["train_config"]["size"] == recipe["parent_recipe"]["train_config"]["size"]  # not the default size
    assert recipe["total_train_seconds"] >= recipe["train_seconds"]
    assert "4-digit operand" in recipe["train_distribution"]
    with pytest.raises(ValueError, match="no training mix 'odd'; choose one of: lengths, unequal"):
        train(TrainConfig(task="addition", kind="ar", steps=1, mix="odd", eval_n=0), None, progress=False)
    with pytest.raises(ValueError, match="is not a diffusion model"):
        train(TrainConfig(task="addition", kind="diffusion", steps=1, eval_n=0, init_from=str(first)), None,
              progress=False)


def test_eval_every_records_a_learning_curve(tmp_path):
    _, recipe = train(TrainConfig(task="sort", kind="diffusion", steps=4, batch_size=8, size=SMALL, eval_n=0,
                                  eval_every=2, eval_every_n=8), tmp_path / "m", progress=False, command="c")
    (point,) = recipe["learning_curve"]  # step 2 only: the final step is scored by the full evaluation
    assert point["step"] == 2 and 0.0 <= point["heldout_exact_match"] <= 1.0 and point["loss"] > 0
    saved = json.loads((tmp_path / "m" / "recipe.json").read_text())
    assert saved["learning_curve"] == recipe["learning_curve"]


def test_cli_canvas_defaults_to_the_tasks_longest_answer(tmp_path):
    out = tmp_path / "count"
    rc = main(["train", "--task", "count", "--kind", "diffusion", "--steps", "1", "--batch-size", "4",
               "--hidden", "32", "--layers", "1", "--eval-n", "0", "--quiet", "--out", str(out)])
    assert rc in (0, None)
    assert json.loads((out / "config.json").read_text())["canvas_length"] == 11  # "8:" + 8 digits + EOS


def test_noise_power_skews_the_noise_level_and_is_checked(monkeypatch):
    """t = eps + (1 - eps) * u ** noise_power: with power 3 the corrupted fraction of a batch is about E[u^3] = 1/4
    instead of 1/2 (n = 4096 canvases x 8 positions: the means differ by far more than their spread, ~0.005)."""
    from dgt_interp.models import build_diffusion
    from dgt_interp.train import TrainError
    import dgt_interp.train as train_mod

    seen = []
    real_where = torch.where

    def spy(cond, *a):
        if cond.dtype == torch.bool and cond.dim() == 2 and not seen:
            seen.append(cond.float().mean().item())
        return real_where(cond, *a)

    model = build_diffusion(SMALL)
    probs = SORT.problems("train", 4096)
    fractions = []
    for power in (1.0, 3.0):
        seen.clear()
        monkeypatch.setattr(train_mod.torch, "where", spy)
        with torch.no_grad():
            diffusion_loss(model, probs, torch.Generator().manual_seed(0), TrainConfig(size=SMALL, self_cond_prob=0.0,
                                                                                      noise_power=power))
        monkeypatch.setattr(train_mod.torch, "where", real_where)
        fractions.append(seen[0])
    assert abs(fractions[0] - 0.5) < 0.03 and abs(fractions[1] - 0.25) < 0.03
    with pytest.raises(TrainError, match="noise_power must be a finite number > 0"):
        train(TrainConfig(size=SMALL, noise_power=0.0, steps=1))
