"""A small next-token training loop for the sandbox source models, readable top to bottom (nanoGPT-style).

Each step draws a batch of (prompt, response) examples from a skill mix (most of one skill, a little of the
others), right-pads it and minimises cross-entropy on the response tokens only. The model is trained on
exactly the text the harness later renders, `render_prompt(prompt) + response + eos`. This is deliberately
not the fusion training loop (harness/training/loop.py): it only builds the sources, seeded and deterministic on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.chat import render_prompt


@dataclass(frozen=True)
class Example:
    """Token ids of prompt + response + eos, and how many of them belong to the prompt."""

    ids: tuple[int, ...]
    prompt_len: int


@dataclass(frozen=True)
class PretrainConfig:
    steps: int
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0


def encode(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[Example]:
    """Tokenize (prompt, response) pairs as the harness renders them: chat template, response, EOS.

    The rendered prompt must be a token prefix of the whole, so the response span is exact in tokens too.
    """
    heads = [render_prompt(tokenizer, p) for p, _ in pairs]
    prompt_ids = tokenizer(heads, add_special_tokens=False)["input_ids"]
    full = tokenizer(
        [h + r + tokenizer.eos_token for h, (_, r) in zip(heads, pairs, strict=True)],
        add_special_tokens=False,
    )
    out = []
    for head_ids, ids, (prompt, response) in zip(prompt_ids, full["input_ids"], pairs, strict=True):
        if ids[: len(head_ids)] != head_ids:  # the template must end on a token boundary
            raise ValueError(f"prompt tokens change when the response is appended: {prompt!r} + {response!r}")
        out.append(Example(tuple(ids), len(head_ids)))
    return out


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio * lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels (-100 outside the response)."""
    width = max(len(ex.ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = torch.tensor(ex.ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1
        labels[row, ex.prompt_len : len(ids)] = ids[ex.prompt_len :]
    return input_ids, mask, labels


def pretrain(
    model: torch.nn.Module,
    data: dict[str, list[Example]],
    mix: dict[str, float],
    cfg: PretrainConfig,
    pad_id: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place for `cfg.steps` steps on batches drawn from `data` in proportions `mix`.

    Returns the loss of every step. The draw order depends only on `cfg.seed`.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    skills = [s for s in mix if mix[s] > 0 and data.get(s)]
    weights = torch.tensor([mix[s] for s in skills], dtype=torch.float)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        choice = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen).tolist()
        batch = []
        for k in choice:
            pool = data[skills[k]]
            batch.append(pool[int(torch.randint(len(pool), (1,), generator=gen))])
        input_ids, mask, labels = collate(batch, pad_id)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
