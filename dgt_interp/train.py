"""Train the zoo's tiny models.

- diffusion: DiffusionGemma's own objective. Each example draws t ~ U(eps, 1); every canvas position
  is replaced with probability t by a token drawn uniformly from the whole vocabulary (what the
  sampler's initialisation and re-noising draw from); cross-entropy on all canvas positions.
  Self-conditioning is trained two-pass (Analog Bits): a no-grad first pass, whose
  temperature-scaled logits feed the second pass for a random half of the batch
  (`self_conditioning_mask`), so the channel is really used.
- ar: a `Gemma4ForCausalLM` twin of the same width and depth, loss on answer tokens + EOS.

The result is saved atomically as an HF dir (weights, config, generation config, tokenizer) with a
`recipe.json` recording the command, seed, config and held-out accuracy.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dgt_interp.atomic import atomic_dir, write_text
from dgt_interp.errors import DgtInterpError
from dgt_interp.evaluate import evaluate, prompt_batch
from dgt_interp.models import TinySize, build_ar, build_diffusion, is_diffusion, load_model, size_of
from dgt_interp.tasks import EOS_ID, PAD_ID, Problem, Task, build_tokenizer, encode, get_task


class TrainError(DgtInterpError, ValueError):
    """Bad training input (one-line message that says what to do)."""


@dataclass
class TrainConfig:
    task: str = "addition"
    kind: str = "diffusion"  # "diffusion" | "ar"
    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eps: float = 1e-3
    # Noise level t = eps + (1 - eps) * u ** noise_power, u uniform: 1 is uniform in t; above 1 trains more
    # often on nearly clean canvases (where a drafted neighbour is usually right, so reading it pays).
    noise_power: float = 1.0
    self_cond_prob: float = 0.5
    # Temperature applied to the first pass's logits before they feed self-conditioning, drawn per
    # example in [t_min, t_max]: `generate` feeds temperature-processed logits, not raw ones.
    sc_temperature: tuple[float, float] = (0.4, 0.8)
    eval_n: int = 1000
    size: TinySize = field(default_factory=TinySize)
    threads: int | None = None
    mix: str | None = None  # a named training distribution of the task (Task.train_mixes)
    init_from: str | None = None  # continue training from this model dir (recipe recorded as parent)
    eval_every: int = 0  # every this many steps, score `eval_every_n` held-out problems (0: never)
    eval_every_n: int = 200


# ----------------------------------------------------------------------------- batches


def canvas_targets(problems: list[Problem], canvas_length: int) -> torch.Tensor:
    """`[batch, canvas]` answer ids, then EOS, then pad."""
    rows = []
    for p in problems:
        ids = encode(p.answer)[1:] + [EOS_ID]
        if len(ids) > canvas_length:
            raise TrainError(f"answer {p.answer!r} + EOS does not fit a canvas of {canvas_length}")
        rows.append(ids + [PAD_ID] * (canvas_length - len(ids)))
    return torch.tensor(rows)


def diffusion_loss(model, problems: list[Problem], gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    batch = prompt_batch([p.prompt for p in problems])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    clean = canvas_targets(problems, model.config.canvas_length)
    b, c = clean.shape
    vocab = model.config.text_config.vocab_size
    t = cfg.eps + (1 - cfg.eps) * torch.rand(b, 1, generator=gen) ** cfg.noise_power
    corrupt = torch.rand(b, c, generator=gen) < t
    noisy = torch.where(corrupt, torch.randint(0, vocab, (b, c), generator=gen), clean)
    dec_mask = F.pad(mask, (0, c), value=1)
    inputs = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=noisy, decoder_attention_mask=dec_mask)
    use_sc = torch.rand(b, generator=gen) < cfg.self_cond_prob
    lo, hi = cfg.sc_temperature
    temp = lo + (hi - lo) * torch.rand(b, 1, 1, generator=gen)
    sc_logits = None
    if use_sc.any():
        # First pass only for the examples that will be self-conditioned; the rest get zeros.
        sc_logits = torch.zeros(b, c, vocab)
        with torch.no_grad():
            first = model(**{k: v[use_sc] for k, v in inputs.items()}).logits
        sc_logits[use_sc] = first / temp[use_sc]
    logits = model(**inputs, self_conditioning_logits=sc_logits,
                   self_conditioning_mask=use_sc if sc_logits is not None else None).logits
    return F.cross_entropy(logits.reshape(-1, vocab), clean.reshape(-1))


def ar_loss(model, problems: list[Problem], gen: torch.Generator, cfg: TrainConfig) -> torch.Tensor:
    seqs, labels = [], []
    for p in problems:
        prompt = encode(p.prompt)
        answer = encode(p.answer)[1:] + [EOS_ID]
        seqs.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, seqs))
    ids = torch.tensor([[PAD_ID] * (width - len(s)) + s for s in seqs])
    lab = torch.tensor([[-100] * (width - len(s)) + s for s in labels])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(s) for s in seqs])[:, None]).long()
    logits = model(input_ids=ids, attention_mask=mask).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------- saving


def save_atomically(model, out_dir: str | Path, recipe: dict) -> Path:
    """Write model + tokenizer + recipe.json to a temp dir beside `out_dir`, then swap it in in one step
    (`atomic.atomic_dir`): a crash at any point leaves either the old dir or the new one, never a
    half-written one, and never no model at all."""
    out = Path(out_dir).resolve()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        write_text(tmp / "recipe.json", json.dumps(recipe, indent=2, default=str) + "\n")
    return out


# ----------------------------------------------------------------------------- loop


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train(cfg: TrainConfig, out_dir: str | Path | None = None, *, progress: bool = True,
          command: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one model; if `out_dir` is given, evaluate on `cfg.eval_n` held-out problems and save it."""
    if cfg.kind not in ("diffusion", "ar"):
        raise TrainError(f"unknown kind {cfg.kind!r}; choose 'diffusion' or 'ar'")
    if not (cfg.noise_power > 0 and math.isfinite(cfg.noise_power)):
        raise TrainError(f"noise_power must be a finite number > 0, got {cfg.noise_power!r}")
    task: Task = get_task(cfg.task)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task.train_sampler(cfg.mix)  # fail fast on an unknown mix
    parent = None
    if cfg.init_from:
        model = load_model(cfg.init_from).train()
        if is_diffusion(model) != (cfg.kind == "diffusion"):
            raise TrainError(f"--init-from {cfg.init_from!r} is not a {cfg.kind} model; pass a matching dir")
        recipe_file = Path(cfg.init_from) / "recipe.json"
        parent = json.loads(recipe_file.read_text()) if recipe_file.is_file() else None
        cfg = replace(cfg, size=size_of(model))  # the recipe records the architecture actually trained
    else:
        build = build_diffusion if cfg.kind == "diffusion" else build_ar
        model = build(cfg.size, seed=cfg.seed).train()
    loss_fn = diffusion_loss if cfg.kind == "diffusion" else ar_loss
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_problems = iter(_train_stream(task, cfg))
    bar = range(cfg.steps)
    if progress:
        bar = tqdm(bar, desc=f"train {cfg.task}/{cfg.kind}", unit="step")
    start, losses, curve = time.time(), [], []
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = loss_fn(model, next(train_problems), gen, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if progress and step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.4f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            curve.append(_checkpoint_eval(model, task, cfg, step + 1, losses, progress))
    train_seconds = time.time() - start
    model.eval()
    recipe = {
        "task": cfg.task,
        "kind": cfg.kind,
        "command": command or " ".join(sys.argv),
        "train_config": asdict(cfg),
        "train_distribution": _describe(task.train_sampler(cfg.mix)),
        "train_seconds": round(train_seconds, 1),
        "total_train_seconds": round(train_seconds + (parent or {}).get("total_train_seconds",
                                                                        (parent or {}).get("train_seconds", 0)), 1),
        "parent_recipe": parent,
        "torch_threads": torch.get_num_threads(),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "learning_curve": curve,
        "transformers_version": __import__("transformers").__version__,
        "torch_version": torch.__version__,
    }
    if out_dir is not None:
        if cfg.eval_n:
            res = evaluate(model, task, n=cfg.eval_n, seed=0, progress=progress)
            recipe["heldout_exact_match"] = res.to_dict()
            if cfg.kind == "diffusion":
                zero = evaluate(model, task, n=cfg.eval_n, seed=0, progress=progress,
                                self_conditioning_mask=torch.zeros(1, dtype=torch.bool))
                recipe["heldout_exact_match_self_conditioning_zeroed"] = zero.to_dict()
            recipe["generation_config"] = model.generation_config.to_dict()
        save_atomically(model, out_dir, recipe)
    return model, recipe


def _checkpoint_eval(model, task: Task, cfg: TrainConfig, step: int, losses: list[float], progress: bool) -> dict:
    """Held-out exact match on `cfg.eval_every_n` problems mid-training (seed 1, unlike the final 1,000)."""
    model.eval()
    res = evaluate(model, task, n=cfg.eval_every_n, seed=1)
    model.train()
    point = {"step": step, "loss": sum(losses[-20:]) / len(losses[-20:]), "heldout_exact_match": res.accuracy}
    if progress:
        tqdm.write(f"step {step}: loss {point['loss']:.4f}, held-out exact match {res.accuracy:.1%} "
                   f"(n={cfg.eval_every_n})")
    return point


def _describe(sampler) -> str:
    return (sampler.__doc__ or sampler.__name__).split("\n\n")[0].strip()


def _train_stream(task: Task, cfg: TrainConfig):
    """Endless training batches, drawn deterministically from the training split."""
    chunk = 0
    while True:
        problems = task.problems("train", cfg.batch_size * 50, seed=cfg.seed * 100_003 + chunk, mix=cfg.mix)
        for i in range(0, len(problems), cfg.batch_size):
            yield problems[i:i + cfg.batch_size]
        chunk += 1
