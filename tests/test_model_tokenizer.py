"""The text path on a tokenizer where one token is many characters: a small random-init DiffusionGemma
of the BPE tokenizer's vocabulary size, saved with that tokenizer (as a released model dir ships its
own), through prompt_batch, capture, Trajectory.to_str_tokens, evaluate and the lens / patch CLI
(with --chat). References: the tokenizer's own encode/decode and HF `generate`."""

from __future__ import annotations

import json

import pytest
import torch

from dgt_interp import capture
from dgt_interp.capturing import PromptTooLongError
from dgt_interp.models import TinySize, build_diffusion, load_model
from dgt_interp.models.bpe import BOS_ID, END_OF_TURN_ID, PAD_ID, START_OF_TURN_ID, bpe_tokenizer
from dgt_interp.tokenizer import TokenizerError, load_tokenizer, position_labels, prompt_batch, to_str_tokens

PROMPTS = ["def", "import os\nprint(os.getcwd())", "The quick brown fox jumps over the lazy dog"]
SIZE = TinySize(vocab_size=16_384, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                head_dim=32, num_experts=2, top_k_experts=1, moe_intermediate_size=32, intermediate_size=64,
                max_position_embeddings=64, canvas_length=8)
STEPS = 4  # denoising steps per canvas: enough for several steps, short on one core


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bpe_model")
    build_diffusion(SIZE, seed=0).save_pretrained(d)
    bpe_tokenizer().save_pretrained(d)  # the model dir ships its tokenizer
    return d


@pytest.fixture(scope="module")
def model(bpe_dir):
    return load_model(bpe_dir)


@pytest.fixture(scope="module")
def tok(model):
    return load_tokenizer(model)


def test_load_model_attaches_the_dirs_bpe_tokenizer(model, tok):
    assert len(tok) == len(bpe_tokenizer()) == SIZE.vocab_size
    assert tok("import os")["input_ids"] == bpe_tokenizer()("import os")["input_ids"]


def test_prompt_batch_left_pads_multi_character_tokens(tok):
    b = prompt_batch(PROMPTS, tok)
    ids, mask = b["input_ids"], b["attention_mask"]
    lengths = [len(tok(p)["input_ids"]) for p in PROMPTS]
    assert len(set(lengths)) == 3 and ids.shape == (3, max(lengths))
    for row, p, n in zip(range(3), PROMPTS, lengths):
        assert ids[row, -n:].tolist() == tok(p)["input_ids"]  # the tokenizer's own ids, BOS first
        assert ids[row, :-n].eq(PAD_ID).all() and mask[row].tolist() == [0] * (ids.shape[1] - n) + [1] * n
        assert n - 1 < len(p) / 2  # several characters per token


def test_chat_prompt_batch_is_the_chat_templates_ids(tok):
    b = prompt_batch(PROMPTS[:2], tok, chat=True)
    for row, p in enumerate(PROMPTS[:2]):
        want = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True)
        want = list(want["input_ids"] if hasattr(want, "keys") else want)
        n = len(want)
        assert b["input_ids"][row, -n:].tolist() == want
        assert want[:2] == [BOS_ID, START_OF_TURN_ID] and want.count(BOS_ID) == 1  # one BOS, from the template
        assert END_OF_TURN_ID in want


def test_capture_sequences_equal_generate_token_for_token(model, tok):
    b = prompt_batch(PROMPTS, tok)
    torch.manual_seed(3)
    ref = model.generate(**b, max_denoising_steps=STEPS).sequences
    traj = capture(model, b["input_ids"], attention_mask=b["attention_mask"], seed=3, max_denoising_steps=STEPS,
                   names="blocks.*.hook_resid_post")
    assert torch.equal(traj.sequences, ref)
    assert traj.n_steps >= 2

    # positions as text: prompt p{i} (padding dropped) and canvas c{j}, through the tokenizer alone
    for row, p in enumerate(PROMPTS):
        labels = traj.to_str_tokens(batch=row)
        prompt_ids = tok(p)["input_ids"]
        want_p = [f"p{i}:{tok.decode([t])!r}" for i, t in enumerate(prompt_ids)]
        new = ref[row, b["input_ids"].shape[1]:].tolist()
        want_c = [f"c{j}:{(tok.decode([t]) if t < len(tok) else f'<id {t}>')!r}" for j, t in enumerate(new)]
        assert labels == want_p + want_c
    assert traj.to_str_tokens(batch=2)[:3] == ["p0:'<bos>'", "p1:'The'", "p2:' quick'"]
    # a step's canvas: the argmax proposal of that step
    step_labels = traj.to_str_tokens(step=1, batch=0)
    assert step_labels[-SIZE.canvas_length:] == position_labels(to_str_tokens(tok, traj.argmax_canvas[1, 0]), "c")


def test_evaluate_decodes_with_the_models_tokenizer(model, tok):
    from dgt_interp.evaluate import generate_answers

    b = prompt_batch(PROMPTS[:2], tok)
    torch.manual_seed(0)
    new = model.generate(**b, max_denoising_steps=STEPS).sequences[:, b["input_ids"].shape[1]:]
    want = []
    for row in new.tolist():
        row = row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
        want.append(tok.decode(row, skip_special_tokens=True))
    assert generate_answers(model, PROMPTS[:2], seed=0, max_denoising_steps=STEPS).answers == want


def test_lens_cli_with_chat_labels_positions_and_top_k_as_token_strings(bpe_dir, tok, tmp_path, capsys):
    from dgt_interp.cli import main

    out = tmp_path / "lens"
    assert main(["lens", "--model", str(bpe_dir), "--prompt", "def foo():", "--out", str(out), "--chat",
                 "--max-denoising-steps", str(STEPS), "-k", "3"]) == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    chat_ids = tok.apply_chat_template([{"role": "user", "content": "def foo():"}], tokenize=True,
                                       add_generation_prompt=True)
    chat_ids = list(chat_ids["input_ids"] if hasattr(chat_ids, "keys") else chat_ids)
    assert s["chat"] is True
    assert s["prompt_tokens"] == position_labels([tok.decode([i]) for i in chat_ids], "p")
    assert s["prompt_tokens"][:4] == ["p0:'<bos>'", "p1:'<start_of_turn>'", "p2:'user'", "p3:'\\n'"]
    assert len(s["canvas_tokens"]) == SIZE.canvas_length and s["canvas_tokens"][0].startswith("c0:")
    assert s["position_label"] == s["canvas_tokens"][0] and s["target"] == tok.decode([s["target_id"]])
    top = s["top_k_logit"]["layers"][str(SIZE.num_hidden_layers - 1)]
    assert len(top) == 3 and all(isinstance(t, str) and 0 <= p <= 1 for t, p in top)
    assert "Ġ" not in "".join(t for t, _ in top)  # text, not byte-level BPE's internal symbols
    assert f"positions: {s['prompt_tokens'][0]}" in printed and f"top-3 at {s['position_label']}" in printed


def test_lens_target_accepts_a_token_as_text(bpe_dir, tok, tmp_path):
    from dgt_interp.cli import main

    out = tmp_path / "lens"
    assert main(["lens", "--model", str(bpe_dir), "--prompt", "x = 1", "--out", str(out), "--target", " foo",
                 "--max-denoising-steps", "2"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["target"] == " foo" and s["target_id"] == tok(" foo", add_special_tokens=False)["input_ids"][0]


def test_too_long_prompt_is_one_line_for_capture_and_the_cli(model, tok, bpe_dir, tmp_path, capsys):
    from dgt_interp.cli import main

    long = " ".join(f"word{i}" for i in range(60))
    b = prompt_batch([long], tok)
    assert b["input_ids"].shape[1] + SIZE.canvas_length > SIZE.max_position_embeddings
    with pytest.raises(PromptTooLongError) as e:
        capture(model, b["input_ids"], max_denoising_steps=1)
    assert "max_position_embeddings 64" in str(e.value) and "\n" not in str(e.value)
    assert main(["lens", "--model", str(bpe_dir), "--prompt", long, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than this model allows" in err[0] and not (tmp_path / "o").exists()


def test_chat_without_a_chat_template_is_one_line(tiny_diffusion):
    with pytest.raises(TokenizerError, match="no chat template"):
        prompt_batch(["1+2="], load_tokenizer(tiny_diffusion), chat=True)


def test_case_study_refuses_a_model_whose_tokenizer_is_not_the_tasks(bpe_dir, tmp_path, capsys):
    """The packaged studies read task text one character per position: a BPE model dir is refused in one line."""
    from dgt_interp.cli import main

    out = tmp_path / "cs"
    assert main(["case-study", "run", "sudoku", "--model", str(bpe_dir), "--quick", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one character per canvas position" in err[0] and not out.exists()


def test_demo_tokenizes_and_decodes_with_the_models_tokenizer(bpe_dir, model):
    """The demo used the tasks' character tokenizer whatever the model; now the model dir's own.
    Reference: the same problem through evaluate.generate_answers with the BPE tokenizer (same seed)."""
    from dgt_interp.demo import run_demo
    from dgt_interp.evaluate import generate_answers
    from dgt_interp.tasks import ADDITION

    lines = []
    run_demo(str(bpe_dir), n=1, seed=0, print_fn=lines.append)
    problem = ADDITION.problems("test", 1, seed=0)[0]
    want = generate_answers(model, [problem.prompt], seed=0).answers[0]
    assert lines[1].startswith(f"{problem.prompt}  ->  {want}   (")  # lines[0]: the header


def test_ids_beyond_the_tokenizers_vocabulary_stay_visible(tok):
    """A model's vocabulary may be larger than its tokenizer's (262,144 vs 16,384): such ids show as
    '<id N>' in labels and answers instead of vanishing (HF's decode drops them silently)."""
    from dgt_interp.tokenizer import decode_until_eos

    a, b = tok("x", add_special_tokens=False)["input_ids"][0], tok(" y", add_special_tokens=False)["input_ids"][0]
    assert tok.decode([a, 20_000, b]) == tok.decode([a, b])  # what HF does: the id is gone
    assert decode_until_eos(tok, [a, 20_000, b, tok.eos_token_id, a]) == "x<id 20000> y"
    assert to_str_tokens(tok, [a, 20_000, b]) == ["x", "<id 20000>", " y"]
