"""A real subword tokenizer, built by a script: byte-level BPE trained on the Python standard library.

The released DiffusionGemma speaks a 262,144-token SentencePiece vocabulary we cannot download; the
zoo's character tokenizer has one token per character. To exercise the text path on a tokenizer
where one token spans many characters (positions != characters, a chat template, BOS handling like
Gemma's) we train one offline, on text every machine has: the `.py` sources of the Python standard
library (`sysconfig.get_paths()['stdlib']`, site-packages excluded), files in sorted order, up to a
fixed byte cap. Same corpus -> byte-identical `tokenizer.json` (HF `tokenizers`' BPE trainer is
deterministic for a fixed input order).

Gemma-like special tokens with FIXED ids (models and tests rely on them):

    <pad>=0  <eos>=1  <bos>=2  <unk>=3  <start_of_turn>=4  <end_of_turn>=5

Encoding prepends `<bos>` (post-processor), like Gemma; the chat template renders
`<bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n` (with
`add_generation_prompt=True`). The built files ship in `dgt_interp/models/bpe_tokenizer/`:

    >>> tok = bpe_tokenizer()                        # the shipped files (no training)
    >>> tok = train_bpe_tokenizer()                  # retrain (about 20 s on one core)
    $ python -m dgt_interp.models.bpe --out DIR      # retrain and save_pretrained to DIR

The dir also holds `corpus.json` (Python version, file count, bytes and SHA-256 of the training
text): a machine whose standard library differs trains a different (equally valid) tokenizer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dgt_interp.atomic import atomic_dir, write_text
from dgt_interp.errors import DgtInterpError

PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN = "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, EOS, BOS, UNK, START_OF_TURN, END_OF_TURN)  # ids 0..5, in this order
PAD_ID, EOS_ID, BOS_ID, UNK_ID, START_OF_TURN_ID, END_OF_TURN_ID = range(6)
VOCAB_SIZE = 16_384
MAX_CORPUS_BYTES = 4_000_000  # ~20 s of training on one core
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
SHIPPED_DIR = Path(__file__).with_name("bpe_tokenizer")

# Gemma's turn format (roles user / model; an "assistant" message is a model turn). Content is verbatim.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


class BPEError(DgtInterpError, ValueError):
    """A BPE tokenizer that cannot be built or loaded (one-line message that says what to do)."""


def corpus_files(stdlib: str | Path | None = None) -> list[Path]:
    """The standard library's `.py` files in sorted (relative posix path) order, site-packages excluded."""
    root = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise BPEError(f"standard library dir {str(root)!r} does not exist; pass stdlib= an existing dir of .py files")
    files = [p for p in root.rglob("*.py") if p.is_file() and not EXCLUDED_DIRS & set(p.relative_to(root).parts)]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def corpus(max_bytes: int = MAX_CORPUS_BYTES, stdlib: str | Path | None = None) -> tuple[list[str], dict]:
    """Whole UTF-8 files (undecodable ones skipped) in `corpus_files` order until `max_bytes` are taken.

    Returns (texts, info) with info = {"python", "files", "bytes", "sha256"} of exactly what was taken.
    """
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise BPEError(f"max_bytes {max_bytes!r} must be an int >= 1")
    texts, digest, total = [], hashlib.sha256(), 0
    for path in corpus_files(stdlib):
        if total >= max_bytes:
            break
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        texts.append(text)
        digest.update(raw)
        total += len(raw)
    if not texts:
        raise BPEError("no UTF-8 .py files found to train on; pass stdlib= a dir of Python sources")
    info = {"python": sys.version.split()[0], "files": len(texts), "bytes": total, "sha256": digest.hexdigest()}
    return texts, info


def _wrap(core: Tokenizer) -> PreTrainedTokenizerFast:
    """The HF tokenizer around a trained `tokenizers.Tokenizer`: special tokens, left padding, chat template."""
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                  padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": [START_OF_TURN, END_OF_TURN]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def train_bpe_tokenizer(vocab_size: int = VOCAB_SIZE, *, max_bytes: int = MAX_CORPUS_BYTES,
                        stdlib: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on `corpus(max_bytes, stdlib)` (deterministic; one core, ~20 s at the defaults).

    The corpus description is kept on the tokenizer as `tok.corpus_info` (what `save` writes to corpus.json).
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 256 + len(SPECIAL_TOKENS):
        raise BPEError(f"vocab_size {vocab_size!r} must be an int >= {256 + len(SPECIAL_TOKENS)} "
                       "(the 256 bytes + the special tokens)")
    texts, info = corpus(max_bytes, stdlib)
    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer, length=len(texts))
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                        special_tokens=[(BOS, BOS_ID)])
    got = [core.token_to_id(t) for t in SPECIAL_TOKENS]
    if got != list(range(len(SPECIAL_TOKENS))):  # the fixed ids models rely on
        raise BPEError(f"special tokens got ids {got}, not 0..{len(SPECIAL_TOKENS) - 1}; this tokenizers version "
                       "orders them differently: report it")
    tok = _wrap(core)
    tok.corpus_info = dict(info, vocab_size=vocab_size, max_bytes=max_bytes)
    return tok


def save(tok: PreTrainedTokenizerFast, out_dir: str | Path) -> Path:
    """`save_pretrained` into `out_dir` (replaced whole) plus `corpus.json`; returns the dir."""
    with atomic_dir(out_dir) as out:
        tok.save_pretrained(str(out), save_jinja_files=False)  # the chat template inside tokenizer_config.json
        info = getattr(tok, "corpus_info", None)
        if info is not None:
            write_text(out / "corpus.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    return Path(out_dir)


@lru_cache(maxsize=1)
def _shipped() -> PreTrainedTokenizerFast:
    if not (SHIPPED_DIR / "tokenizer.json").is_file():
        raise BPEError(f"the shipped BPE tokenizer is missing from {str(SHIPPED_DIR)!r}; rebuild it with "
                       f"`python -m dgt_interp.models.bpe --out {SHIPPED_DIR}` or reinstall dgt_interp")
    return AutoTokenizer.from_pretrained(str(SHIPPED_DIR))


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """The shipped byte-level BPE tokenizer (16,384 tokens; ids 0..5 = pad, eos, bos, unk, start/end_of_turn).

    Cached: every call returns the same object (do not modify it; `copy.deepcopy` it first).
    """
    return _shipped()


def shipped_corpus_info() -> dict:
    """What the shipped tokenizer was trained on (`corpus.json`)."""
    return json.loads((SHIPPED_DIR / "corpus.json").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dgt_interp.models.bpe", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output dir (tokenizer.json, tokenizer_config.json, corpus.json)")
    p.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    p.add_argument("--max-bytes", type=int, default=MAX_CORPUS_BYTES, help="bytes of standard-library source to train on")
    args = p.parse_args(argv)
    try:
        tok = train_bpe_tokenizer(args.vocab_size, max_bytes=args.max_bytes)
        save(tok, args.out)
    except DgtInterpError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    info = tok.corpus_info
    print(f"wrote {args.out}: {len(tok)} tokens, trained on {info['files']} files / {info['bytes']:,} bytes of the "
          f"Python {info['python']} standard library (sha256 {info['sha256'][:12]})")
    return 0


__all__ = ["BPEError", "SPECIAL_TOKENS", "VOCAB_SIZE", "CHAT_TEMPLATE", "corpus", "corpus_files",
           "train_bpe_tokenizer", "save", "bpe_tokenizer", "shipped_corpus_info"]


if __name__ == "__main__":
    sys.exit(main())
