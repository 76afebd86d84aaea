"""The character-level tokenizer shared by every task, as a real HF tokenizer.

One token per character, so canvas positions and answer characters line up one to one. Saved with
`save_pretrained`, it loads back with plain `AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .base import TaskError

PAD, EOS, BOS = "<pad>", "<eos>", "<bos>"
# DiffusionGemma reserves image token ids; they sit at the end of the vocabulary (never produced by tasks).
IMAGE_TOKENS = ("<image>", "<boi>", "<eoi>")
CHARS = tuple("0123456789") + ("+", "=", ">", ",", "?", "[", "]", ":", "-", "#")
UNUSED = tuple(f"<unused{i}>" for i in range(32 - 3 - len(CHARS) - len(IMAGE_TOKENS)))
VOCAB: tuple[str, ...] = (PAD, EOS, BOS) + CHARS + UNUSED + IMAGE_TOKENS
assert len(VOCAB) == 32

PAD_ID, EOS_ID, BOS_ID = 0, 1, 2


@lru_cache(maxsize=1)
def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer; prepends `<bos>`, pads on the left (what batched generation needs)."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()  # decode() joins characters without spaces
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=128,
    )
    tok.add_special_tokens({"additional_special_tokens": list(IMAGE_TOKENS)})
    return tok


def is_task_tokenizer(tokenizer) -> bool:
    """Whether `tokenizer` is this character tokenizer (same vocabulary, e.g. a zoo dir's saved copy)."""
    return len(tokenizer) == len(VOCAB) and tokenizer.convert_ids_to_tokens(list(range(len(VOCAB)))) == list(VOCAB)


def encode(text: str) -> list[int]:
    """Ids of `text` with the leading `<bos>`, no padding. Raises on characters outside the vocabulary."""
    unknown = sorted({c for c in text if c not in CHARS})
    if unknown:
        raise TaskError(f"characters {unknown} are not in the task vocabulary {''.join(CHARS)!r}; remove them")
    return build_tokenizer()(text)["input_ids"]


def decode_answer(ids) -> str:
    """Characters of generated ids up to the first EOS (pad/special ids dropped)."""
    out = []
    for i in (int(x) for x in ids):
        if i == EOS_ID:
            break
        tok = VOCAB[i] if 0 <= i < len(VOCAB) else ""
        if tok in CHARS:
            out.append(tok)
        else:
            out.append("\N{REPLACEMENT CHARACTER}" if i != PAD_ID else "")
    return "".join(out)
