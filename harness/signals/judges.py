"""Judges of inference mode: for each example, pick the best of the candidates' generated responses.

Two judges, chosen by `judges.kind` in the experiment:

- `reference` (`ReferenceJudge`, the sandbox default): scores each response against the reference answer.
  Sandbox rows (`meta["skill"]` in knowledge / reasoning / safety) use the sandbox's own scorer
  (harness.sandbox.scoring: exact answer, `####` number match, refusal of harmful and answering of benign
  requests). Other rows use a generic verifiable scorer: numeric match of the final number when the
  reference holds `#### N`, else SQuAD-style token F1. Winner: the highest score; exact ties go to the seeded
  draw.
- `reward-models` (`RewardModelJudge`, the paper's setting): every reward model scores every response, votes
  for its best candidate, and the candidate with the most votes wins. Vote ties go to the highest mean of
  the per-model z-scores (each model's scores standardised across the candidates of that example, so models
  on different scales weigh the same: the reward models' margin); remaining ties go to the seeded draw.

The tie rule: evidence first (the reference score; the reward models' votes, then their margin), then a seeded
draw, never the candidates' order. The draw ranks the tied candidates by sha256(run seed, example id, name): a
uniform draw per example, the same on every rerun with the same seed, independent of how the candidates are
listed. Breaking ties by order would hand every tie to the target (the pipeline lists it first), so inference
mode would teach the target its own answers whenever the judge cannot tell them apart, by construction rather
than by evidence.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.config import JudgeSpec
from harness.errors import HarnessError

SANDBOX_SKILLS = ("knowledge", "reasoning", "safety")
Row = tuple[str, str | None, dict[str, str], dict[str, Any]]


@dataclass
class JudgeResult:
    """The winning candidate, each candidate's score (reference: 0..1; reward models: mean z-score) and votes."""

    winner: str
    scores: dict[str, float]
    votes: dict[str, int] | None = None


class Judge(Protocol):
    def pick(self, prompt: str, reference: str | None, candidates: dict[str, str], meta: dict[str, Any]) -> JudgeResult: ...

    def pick_batch(self, rows: list[Row]) -> list[JudgeResult]: ...


# Which tie rule made a selection: part of the selection store's key, so selections made under another rule are
# never reused. 2: ties by margin, then the seeded draw (1: ties went to the candidate listed first).
TIE_RULE_VERSION = 2


def draw(seed: int, example: str, name: str) -> int:
    """The seeded draw's ticket of one candidate on one example: tied candidates are ranked by it (lowest
    wins). Uniform over candidates per example, reproducible given the seed, independent of candidate order."""
    digest = hashlib.sha256(f"{seed}\x1f{example}\x1f{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def example_key(prompt: str, meta: dict[str, Any]) -> str:
    """What identifies an example in the draw: its corpus id, else its prompt."""
    return str(meta["id"]) if "id" in meta else prompt


def best_by_score(scores: dict[str, float], seed: int, example: str) -> str:
    """Highest score; exact ties go to the seeded draw."""
    if not scores:
        raise ValueError("no candidates to judge")
    return min(scores, key=lambda c: (-scores[c], draw(seed, example, c)))


# ---------------------------------------------------------------- generic verifiable scoring

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(response: str, reference: str) -> float:
    """SQuAD token-level F1 between normalised response and reference (1.0 when both are empty)."""
    pred, gold = normalize_answer(response).split(), normalize_answer(reference).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def final_number(text: str) -> float | None:
    """The first number after the last `####`, else the last number in the text (thousands commas ignored)."""
    if "####" in text:
        found = _NUMBER.findall(text.rsplit("####", 1)[1])
        raw = found[0] if found else None
    else:
        found = _NUMBER.findall(text)
        raw = found[-1] if found else None
    return float(raw.replace(",", "")) if raw is not None else None


def numeric_match(response: str, reference: str) -> float:
    """1.0 when the response's final number equals the reference's `#### N`, else 0.0.

    Lenient on the response (its `#### N` if any, else its last number, like GSM8K's flexible extract):
    chat models outside the sandbox rarely end with `####`."""
    gold, pred = final_number(reference), final_number(response)
    return float(gold is not None and pred is not None and math.isclose(gold, pred, rel_tol=0, abs_tol=1e-9))


def generic_score(response: str, reference: str) -> float:
    """The verifiable scorer for rows outside the sandbox: `#### N` numeric match, else token F1."""
    if "####" in reference:
        return numeric_match(response, reference)
    return token_f1(response, reference)


def sandbox_score(skill: str, response: str, reference: str, meta: dict[str, Any]) -> float:
    """The sandbox's own scorer (shared with its lm-eval metrics): against `meta["answer"]` when the row has
    it, else against the answer implied by the reference."""
    from harness.sandbox import scoring

    if "answer" in meta:
        return scoring.score(skill, response, str(meta["answer"]))
    return scoring.judge(response, reference, skill)


class ReferenceJudge:
    """Scores each response against the reference; the highest score wins (exact ties: the seeded draw)."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, response: str, reference: str | None, meta: dict[str, Any]) -> float:
        """0..1; a row without a reference scores 0 for everyone, so the seeded draw picks its winner."""
        if reference is None:
            return 0.0
        skill = meta.get("skill")
        if skill in SANDBOX_SKILLS:
            return sandbox_score(str(skill), response, reference, meta)
        return generic_score(response, reference)

    def pick(self, prompt: str, reference: str | None, candidates: dict[str, str], meta: dict[str, Any]) -> JudgeResult:
        scores = {name: self.score(text, reference, meta) for name, text in candidates.items()}
        return JudgeResult(winner=best_by_score(scores, self.seed, example_key(prompt, meta)), scores=scores)

    def pick_batch(self, rows: list[Row]) -> list[JudgeResult]:
        return [self.pick(*row) for row in rows]


# ---------------------------------------------------------------- reward models


def vote(per_model: Sequence[dict[str, float]], seed: int, example: str, ndigits: int = 9) -> JudgeResult:
    """Aggregate several reward models' scores of one example's candidates (the rule in the module docstring).

    Each model votes for its highest-scoring candidate (its own exact ties: the seeded draw). Most votes wins;
    vote ties go to the highest mean z-score (population std per model; a model scoring all candidates equally
    contributes 0), compared after rounding to `ndigits` so float noise cannot decide; then the seeded draw.
    """
    if not per_model or not per_model[0]:
        raise ValueError("vote() needs at least one model and one candidate")
    names = list(per_model[0])
    votes = dict.fromkeys(names, 0)
    z_sum = dict.fromkeys(names, 0.0)
    for scores in per_model:
        votes[best_by_score(scores, seed, example)] += 1
        mean = sum(scores.values()) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores.values()) / len(scores))
        for name in names:
            z_sum[name] += (scores[name] - mean) / std if std > 0 else 0.0
    mean_z = {name: z_sum[name] / len(per_model) for name in names}
    winner = min(names, key=lambda c: (-votes[c], -round(mean_z[c], ndigits), draw(seed, example, c)))
    return JudgeResult(winner=winner, scores=mean_z, votes=votes)


class RewardModel:
    """One sequence-classification reward model (single output) with its own tokenizer and chat template.

    Input format: the tokenizer's chat template over [user: prompt, assistant: response] when it has one,
    else the tokenizer's text-pair encoding (prompt, response), as OpenAssistant-style reward models expect.
    Long inputs are truncated from the left, so the end of the response is always scored. Weights load in
    bfloat16 on a GPU (about 2 bytes per parameter), float32 on CPU.
    """

    def __init__(
        self, spec: str, device: str = "cpu", batch_size: int = 16, max_length: int = 2048,
        sandbox_models: dict[str, Path] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from harness.models import resolve

        resolved = resolve(spec, sandbox_models, where="judges")
        self.name, self.device, self.batch_size = spec, device, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(resolved.pretrained, **resolved.hf_kwargs())
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(
            resolved.pretrained, dtype=dtype, **resolved.hf_kwargs()
        )
        if self.model.config.num_labels != 1:
            raise HarnessError(
                f"reward model '{spec}' has {self.model.config.num_labels} outputs; a reward model gives one score "
                "(num_labels=1)", "judges",
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side, self.tokenizer.truncation_side = "right", "left"
        limit = min(max_length, getattr(self.model.config, "max_position_embeddings", max_length) or max_length)
        self.max_length = min(limit, self.tokenizer.model_max_length or limit)
        self.model.to(device).eval()

    def _encode(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
            return list(tok(text, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"])
        return list(tok(prompt, response, truncation=True, max_length=self.max_length)["input_ids"])

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One scalar reward per (prompt, response), in batches of similar length."""
        import torch

        encoded = [self._encode(p, r) for p, r in pairs]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        out = [0.0] * len(encoded)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, padding=True, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
                for i, value in zip(idx, logits[:, 0].float().tolist(), strict=True):
                    out[i] = value
        return out


class RewardModelJudge:
    """Reward models vote; most votes wins, then mean z-score, then the seeded draw (see `vote`)."""

    def __init__(self, models: Sequence[RewardModel], seed: int = 0) -> None:
        if not models:
            raise HarnessError("the reward-models judge needs at least one reward model (judges.models)", "judges")
        self.models = list(models)
        self.seed = seed

    def pick(self, prompt: str, reference: str | None, candidates: dict[str, str], meta: dict[str, Any]) -> JudgeResult:
        return self.pick_batch([(prompt, reference, candidates, meta)])[0]

    def pick_batch(self, rows: list[Row]) -> list[JudgeResult]:
        """Every model scores all (prompt, response) pairs of all rows in one batched pass."""
        keys = [(r, name) for r, (_, _, cands, _) in enumerate(rows) for name in cands]
        pairs = [(rows[r][0], rows[r][2][name]) for r, name in keys]
        tables: list[list[dict[str, float]]] = [[{} for _ in rows] for _ in self.models]
        for m, model in enumerate(self.models):
            for (r, name), value in zip(keys, model.score(pairs), strict=True):
                tables[m][r][name] = value
        return [
            vote([tables[m][r] for m in range(len(self.models))], self.seed, example_key(rows[r][0], rows[r][3]))
            for r in range(len(rows))
        ]


def build_judge(
    spec: JudgeSpec,
    seed: int = 0,
    device: str = "cpu",
    sandbox_models: dict[str, Path] | None = None,
    batch_size: int = 16,
) -> Judge:
    """The judge an experiment asks for; reward models are loaded once, here. `seed` (the run's) seeds the draw
    that breaks ties."""
    if spec.kind == "reference":
        return ReferenceJudge(seed)
    if spec.kind == "reward-models":
        models = [RewardModel(s, device, batch_size, sandbox_models=sandbox_models) for s in spec.models]
        return RewardModelJudge(models, seed)
    raise HarnessError(f"unknown judge kind '{spec.kind}'", "judges")
