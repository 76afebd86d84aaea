"""Batched generation, exact match, confidence intervals, prompt validation."""

import pytest
import torch

from dgt_interp.evaluate import evaluate, generate_answers, prompt_batch
from dgt_interp.stats import wilson_interval
from dgt_interp.tasks import ADDITION, EOS_ID


def test_prompt_batch_left_pads():
    b = prompt_batch(["1+2=", "123+456="])
    assert b["input_ids"].shape == (2, 9)
    assert b["attention_mask"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prompt_batch(["1 + 2"])
    with pytest.raises(ValueError, match="too long: this model allows 4"):
        prompt_batch(["1+2="], max_positions=4)


def test_generate_answers_matches_plain_generate(tiny_diffusion, tiny_ar):
    prompts = ["12+34=", "9+9="]
    for model in (tiny_diffusion, tiny_ar):
        kw = {"max_denoising_steps": 6} if hasattr(model.generation_config, "max_denoising_steps") else {}
        gen = generate_answers(model, prompts, seed=5, **kw)
        batch = prompt_batch(prompts)
        torch.manual_seed(5)
        out = model.generate(**batch, **kw)
        seqs = out.sequences if hasattr(out, "sequences") else out
        assert torch.equal(gen.new_ids, seqs[:, batch["input_ids"].shape[1]:])


def test_prompt_longer_than_model_allows(tiny_ar):
    with pytest.raises(ValueError, match="too long"):
        generate_answers(tiny_ar, ["1" * 130 + "="])


def test_evaluate_counts_exact_matches_of_a_model_that_is_always_right():
    class Oracle(torch.nn.Module):
        """Stands in for a model whose generate always emits the right answer."""

        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"get_text_config": lambda self: type("T", (), {"max_position_embeddings": 64})()})()
            self.generation_config = type("G", (), {"max_new_tokens": 8})()
            self.device = torch.device("cpu")
            self.probs = None

        def generate(self, input_ids, attention_mask):
            from dgt_interp.tasks import encode
            rows = [encode(p.answer)[1:] + [EOS_ID] for p in self.probs]
            rows = [r + [0] * (8 - len(r)) for r in rows]
            return torch.cat([input_ids, torch.tensor(rows)], 1)

    probs = ADDITION.problems("test", 10)
    oracle = Oracle()
    oracle.probs = probs
    res = evaluate(oracle, ADDITION, problems=probs, batch_size=10)
    assert res.correct == 10 and res.accuracy == 1.0 and res.ci95[1] == 1.0


def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(990, 1000)
    assert abs(lo - 0.98170) < 1e-4 and abs(hi - 0.99457) < 1e-4
    assert wilson_interval(0, 10)[0] == 0.0
