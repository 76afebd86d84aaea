"""The shipped byte-level BPE tokenizer (dgt_interp/models/bpe.py): rebuilt byte for byte from the
standard library, several characters per token, lossless round trip, fixed special ids, Gemma's
chat template."""

from __future__ import annotations

import pytest

from dgt_interp.models.bpe import (
    BOS_ID, END_OF_TURN_ID, EOS_ID, PAD_ID, SHIPPED_DIR, SPECIAL_TOKENS, START_OF_TURN_ID, UNK_ID, BPEError, corpus,
    bpe_tokenizer, main, save, shipped_corpus_info, train_bpe_tokenizer,
)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "  leading spaces, tabs\tand\nnewlines\n\n",
    "unicode: café, naïve, 東京, emoji 🙂, math ∑",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def test_retraining_reproduces_the_shipped_files_byte_for_byte(tmp_path):
    info = shipped_corpus_info()
    _, here = corpus(info["max_bytes"])
    if here["sha256"] != info["sha256"]:
        pytest.skip(f"this machine's standard library (Python {here['python']}) differs from the one the shipped "
                    f"tokenizer was trained on (Python {info['python']}); retraining gives another tokenizer")
    save(train_bpe_tokenizer(info["vocab_size"], max_bytes=info["max_bytes"]), tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "corpus.json"):
        assert (tmp_path / "tok" / name).read_bytes() == (SHIPPED_DIR / name).read_bytes(), name


def test_special_tokens_have_the_fixed_ids(tok):
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4, 5]
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (PAD_ID, EOS_ID, BOS_ID, UNK_ID)
    assert len(tok) == 16_384 and tok.padding_side == "left"
    assert sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) < 2_000_000  # the shipped files stay small


def test_a_token_spans_several_characters_on_ordinary_text(tok):
    # Prose (not Python source: not what it was trained on) and code: both well under one token per char.
    for text, most in ((TEXTS[0], 0.5), (TEXTS[1], 0.5)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) <= most * len(text), (text, tok.convert_ids_to_tokens(ids))
    assert max(len(t) for t in tok.convert_ids_to_tokens(tok(TEXTS[1])["input_ids"])) >= 4


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trips(tok, text):
    ids = tok(text)["input_ids"]
    assert ids[0] == BOS_ID  # the post-processor prepends BOS, like Gemma
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert UNK_ID not in ids  # byte-level: every string is encodable


def test_chat_template_yields_gemma_turns(tok):
    """Reference: the turn markers by their fixed ids around the pieces encoded on their own (the
    special tokens split the text, so nothing merges across them)."""
    content = "def foo(x):"
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    assert text == f"<bos><start_of_turn>user\n{content}<end_of_turn>\n<start_of_turn>model\n"

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    want = ([BOS_ID, START_OF_TURN_ID] + enc("user\n" + content) + [END_OF_TURN_ID] + enc("\n") + [START_OF_TURN_ID]
            + enc("model\n"))
    got = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=True, add_generation_prompt=True)
    got = got["input_ids"] if isinstance(got, dict) or hasattr(got, "keys") else got
    assert list(got) == want


@pytest.mark.parametrize("kwargs, needle", [
    ({"vocab_size": 100}, "vocab_size 100 must be"),
    ({"max_bytes": 0}, "max_bytes 0 must be"),
    ({"stdlib": "/nonexistent/stdlib"}, "does not exist"),
])
def test_bad_builder_input_is_one_line(kwargs, needle):
    with pytest.raises(BPEError) as e:
        train_bpe_tokenizer(**kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_module_cli_writes_a_loadable_tokenizer(tmp_path, capsys):
    """`python -m dgt_interp.models.bpe --out DIR` on a small corpus: AutoTokenizer loads what it wrote."""
    from transformers import AutoTokenizer

    assert main(["--out", str(tmp_path / "t"), "--vocab-size", "600", "--max-bytes", "200000"]) == 0
    assert "wrote" in capsys.readouterr().out
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "t"))
    assert len(loaded) == 600 and loaded.chat_template and loaded("x = 1")["input_ids"][0] == BOS_ID
