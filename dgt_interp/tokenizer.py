"""The model's own tokenizer: finding it, turning prompts into ids and generated ids into text.

Every function of dgt_interp that reads text or writes answers takes the model's tokenizer (an HF
tokenizer); nothing below the tasks knows a text format. A model dir ships its tokenizer
(`tokenizer.json` + `tokenizer_config.json`, as every zoo dir does); `load_tokenizer` finds it:

    >>> tok = load_tokenizer("addition-diffusion")      # zoo name, model dir, or a loaded model
    >>> batch = prompt_batch(["1234+5678="], tok)        # left-padded input_ids + attention_mask
    >>> decode_until_eos(tok, traj.sequences[0, batch["input_ids"].shape[1]:])   # '6912'

A loaded model remembers its tokenizer (`load_model` attaches the dir's; the tiny builders attach
the character tokenizer of the tasks); `attach_tokenizer(model, tok)` does it by hand.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from transformers import AutoTokenizer

from dgt_interp import zoo
from dgt_interp.errors import DgtInterpError


class TokenizerError(DgtInterpError, ValueError):
    """No tokenizer, or text it cannot encode (one-line message that says what to do)."""


_ATTACHED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def attach_tokenizer(model, tokenizer) -> None:
    """Remember `tokenizer` as `model`'s own (what `load_tokenizer(model)` returns)."""
    _ATTACHED[model] = tokenizer


def load_tokenizer(model_or_dir):
    """The tokenizer of a loaded model, a model dir or a zoo name (one-line error if there is none)."""
    if isinstance(model_or_dir, torch.nn.Module):
        if model_or_dir in _ATTACHED:
            return _ATTACHED[model_or_dir]
        source = getattr(model_or_dir, "name_or_path", "") or ""
        if not source or not Path(source).expanduser().is_dir():
            raise TokenizerError(f"this {type(model_or_dir).__name__} has no tokenizer attached; load it with "
                                 "dgt_interp.models.load_model(dir) or call attach_tokenizer(model, tokenizer)")
        tok = load_tokenizer(source)
        attach_tokenizer(model_or_dir, tok)
        return tok
    path = Path(zoo.resolve(model_or_dir)).expanduser()
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise TokenizerError(f"{str(path)!r} has no tokenizer (tokenizer.json + tokenizer_config.json); save the "
                             "model's tokenizer there with tokenizer.save_pretrained(dir)")
    return AutoTokenizer.from_pretrained(str(path))


def _unknown_ids(tokenizer) -> set[int]:
    """Ids a tokenizer emits for text it does not know (its unk id; a pad id inside a prompt)."""
    return {i for i in (tokenizer.unk_token_id, tokenizer.pad_token_id) if i is not None}


def prompt_batch(prompts, tokenizer, *, max_positions: int | None = None) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` `[batch, pos]` for `prompts` (with the tokenizer's BOS).

    One-line errors: no prompts, text the tokenizer cannot encode, more than `max_positions` tokens.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TokenizerError("prompt_batch needs a non-empty list of prompt strings")
    bad = _unknown_ids(tokenizer)
    for p in prompts:
        ids = tokenizer(p)["input_ids"]
        if any(i in bad for i in ids):
            unknown = sorted({c for c in p if any(i in bad for i in tokenizer(c, add_special_tokens=False)["input_ids"])})
            raise TokenizerError(f"prompt {p!r} has characters {unknown} outside the vocabulary; remove them")
    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    if max_positions is not None and enc["input_ids"].shape[1] > max_positions:
        raise TokenizerError(
            f"prompt of {enc['input_ids'].shape[1]} tokens is too long: this model allows {max_positions} "
            "(prompt + generated tokens); shorten the prompt or generate fewer tokens"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def decode_until_eos(tokenizer, ids, eos_id: int | None = None) -> str:
    """The text of generated `ids` up to the first EOS (`eos_id`, default the tokenizer's), special tokens dropped."""
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    out = []
    for i in (int(x) for x in ids):
        if i == eos:
            break
        out.append(i)
    return tokenizer.decode(out, skip_special_tokens=True)


def to_str_tokens(tokenizer, ids) -> list[str]:
    """Each id as its token string (`tokenizer.convert_ids_to_tokens`), e.g. for axis labels."""
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


__all__ = ["TokenizerError", "attach_tokenizer", "load_tokenizer", "prompt_batch", "decode_until_eos", "to_str_tokens"]
