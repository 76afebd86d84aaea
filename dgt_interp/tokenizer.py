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


def has_chat_template(tokenizer) -> bool:
    """Whether `tokenizer` carries a chat template (what `prompt_batch(..., chat=True)` needs)."""
    return bool(getattr(tokenizer, "chat_template", None))


def require_chat_template(tokenizer) -> None:
    """One-line error unless `tokenizer` has a chat template (call before any work that `--chat` would spoil)."""
    if not has_chat_template(tokenizer):
        raise TokenizerError("this tokenizer has no chat template; drop --chat (chat=True), or use a model whose "
                             "tokenizer_config.json has a chat_template")


def chat_prompts(prompts, tokenizer) -> list[str]:
    """Each prompt as one user turn in the tokenizer's chat template, with the generation prompt (the
    model's turn) appended, as text: Gemma's `<bos><start_of_turn>user\n{p}<end_of_turn>\n<start_of_turn>model\n`.
    """
    require_chat_template(tokenizer)
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def prompt_batch(prompts, tokenizer, *, max_positions: int | None = None, chat: bool = False) -> dict[str, torch.Tensor]:
    """Left-padded `input_ids` and `attention_mask` `[batch, pos]` for `prompts` (with the tokenizer's BOS).

    `chat=True` wraps each prompt in the tokenizer's chat template first (`chat_prompts`; the template
    writes the BOS itself). One-line errors: no prompts, text the tokenizer cannot encode, no chat
    template, more than `max_positions` tokens.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise TokenizerError("prompt_batch needs a non-empty list of prompt strings")
    texts = chat_prompts(prompts, tokenizer) if chat else prompts
    bad = _unknown_ids(tokenizer)
    for p in prompts:
        ids = tokenizer(p)["input_ids"]
        if any(i in bad for i in ids):
            unknown = sorted({c for c in p if any(i in bad for i in tokenizer(c, add_special_tokens=False)["input_ids"])})
            raise TokenizerError(f"prompt {p!r} has characters {unknown} outside the vocabulary; remove them")
    enc = tokenizer(texts, padding=True, padding_side="left", return_tensors="pt", add_special_tokens=not chat)
    if max_positions is not None and enc["input_ids"].shape[1] > max_positions:
        raise TokenizerError(
            f"prompt of {enc['input_ids'].shape[1]} tokens is too long: this model allows {max_positions} "
            "(prompt + generated tokens); shorten the prompt or generate fewer tokens"
        )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def decode_until_eos(tokenizer, ids, eos_id: int | None = None) -> str:
    """The text of generated `ids` up to the first EOS (`eos_id`, default the tokenizer's), special tokens dropped.

    An id beyond the tokenizer's vocabulary (the model's may be larger) shows as `<id N>`, not dropped.
    """
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    parts, run = [], []
    for i in (int(x) for x in ids):
        if i == eos:
            break
        if 0 <= i < len(tokenizer):
            run.append(i)
        else:
            parts += [tokenizer.decode(run, skip_special_tokens=True), f"<id {i}>"]
            run = []
    return "".join(parts) + tokenizer.decode(run, skip_special_tokens=True)


def to_str_tokens(tokenizer, ids) -> list[str]:
    """Each id as the text it stands for, decoded alone (like TransformerLens' `to_str_tokens`):
    `' foo'` for a byte-level BPE token (not `'Ġfoo'`), a character for the zoo's character tokenizer,
    special tokens by name (`'<bos>'`); an id beyond the tokenizer's vocabulary (a model's vocabulary
    may be larger) as `'<id N>'`.
    """
    out = []
    for i in (int(x) for x in ids):
        if i < 0 or i >= len(tokenizer) or tokenizer.convert_ids_to_tokens(i) is None:
            out.append(f"<id {i}>")
        else:
            out.append(tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False))
    return out


def position_labels(str_tokens, prefix: str, start: int = 0) -> list[str]:
    """`prefix{i}:{token!r}` per token, e.g. `p3:'def'` (prompt position 3), `c0:' foo'` (canvas position 0)."""
    return [f"{prefix}{start + i}:{t!r}" for i, t in enumerate(str_tokens)]


__all__ = ["TokenizerError", "attach_tokenizer", "load_tokenizer", "has_chat_template", "require_chat_template",
           "chat_prompts", "prompt_batch", "decode_until_eos", "to_str_tokens", "position_labels"]
