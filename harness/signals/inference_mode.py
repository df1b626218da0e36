"""Inference mode: every candidate answers each prompt, a judge picks the best answer, and the winner's
signals become the example's teacher.

Every candidate is teacher-forced on (prompt, its own response) and aligned like in training mode, one cached
store per candidate, reusable across judges; the selection store keeps the winner's name, every candidate's
score, the winning response and the winner's teacher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from harness.config import JudgeSpec, SignalSpec
from harness.models import load_tokenizer
from harness.signals.candidate_store import Context, fill_candidate_store, progress_bar
from harness.signals.inputs import CorpusRow, ModelHandle, model_fingerprint
from harness.signals.judges import TIE_RULE_VERSION, build_judge
from harness.signals.store import ExampleSignal, SignalStore, StoreMeta, example_from_table
from harness.store import stable_hash

log = logging.getLogger("harness.signals")

GenerateFn = Callable[..., Sequence[str]]
# The built-in generator's identity in cache keys: the name it had when the first caches were written, so that
# moving the module does not invalidate every generation store.
BUILTIN_GENERATOR = "harness.generate.generate"


class JudgeLike(Protocol):
    def pick(
        self, prompt: str, reference: str | None, candidates: dict[str, str], meta: dict[str, Any]
    ) -> Any: ...


@dataclass
class Responder:
    """How candidates answer in inference mode: harness.generate (HF in memory, or vLLM from the model's path)
    or a stand-in `generate_fn` with the same signature."""

    spec: SignalSpec
    seed: int
    generate_fn: GenerateFn | None

    def _fn(self) -> GenerateFn:
        if self.generate_fn is not None:
            return self.generate_fn
        from harness.signals.generate import generate

        return generate

    def _settings(self) -> dict[str, Any]:
        """The generation settings: passed to the generator and part of the cache identity."""
        s = self.spec
        return {
            "max_new_tokens": s.max_new_tokens,
            "do_sample": s.do_sample,
            "temperature": s.gen_temperature,
            "stop": list(s.stop),
            "batch_size": s.batch_size,
            # Greedy decoding ignores the seed: every seed shares one generation store (keyed as seed 0, the key
            # such stores always had), so `--seeds` regenerates nothing. Sampling keys each seed apart.
            "seed": self.seed if s.do_sample else 0,
        }

    def _kwargs(self, cand: ModelHandle, backend: str) -> dict[str, Any]:
        kwargs = {**self._settings(), "chat_template": cand.chat_template, "progress": False}
        if self.generate_fn is None:
            from harness.signals.generate import VLLMOptions

            kwargs["backend"] = backend
            if backend == "vllm":
                kwargs["vllm_options"] = VLLMOptions(**self.spec.vllm.model_dump())
        return kwargs

    def backend(self, cand: ModelHandle) -> str:
        if self.generate_fn is not None:
            return "custom"
        from harness.signals.generate import select_backend

        return select_backend(self.spec.backend, model_is_path=cand.model.local)

    def identity(self, cand: ModelHandle) -> dict[str, Any]:
        fn = self._fn()
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        return {
            **self._settings(),
            "backend": self.backend(cand),
            "generator": BUILTIN_GENERATOR if self.generate_fn is None else name,
        }

    def all_at_once(self, cand: ModelHandle, rows: list[CorpusRow]) -> dict[str, str] | None:
        if self.backend(cand) != "vllm":
            return None
        m = cand.model
        path = f"gguf:{m.pretrained}#{m.gguf_file}" if m.gguf_file else m.pretrained
        tok = load_tokenizer(m, cand.trust_remote_code)
        out = self._fn()(path, tok, [r.prompt for r in rows], **self._kwargs(cand, "vllm"))
        return {r.id: text for r, text in zip(rows, out, strict=True)}

    def per_shard(self, model: Any, tok: Any, cand: ModelHandle, rows: list[CorpusRow]) -> list[str]:
        out = list(self._fn()(model, tok, [r.prompt for r in rows], **self._kwargs(cand, "hf")))
        if len(out) != len(rows):
            raise ValueError(f"generation returned {len(out)} responses for {len(rows)} prompts")
        return out


def select_winners(ctx: Context, candidates: dict[str, Path], judge: Any, inputs: dict[str, Any]) -> Path:
    """Judge every example of this rank's missing selection shards and keep the winner's signals."""
    names = tuple(candidates)
    meta = StoreMeta(
        stable_hash(inputs),
        "inference",
        len(ctx.rows),
        ctx.spec.shard_size,
        ctx.spec.top_k,
        len(ctx.target_tok),
        inputs,
        candidates=names,
    )
    store = SignalStore.create(ctx.cache_dir / "signals", meta)
    missing = store.missing_shards(ctx.rank, ctx.world_size)
    log.info("signals: inference selection: %d of %d shards to judge", len(missing), meta.n_shards)
    if not missing:
        return store.path
    judge = judge()
    stores = {n: SignalStore.open(p) for n, p in candidates.items()}
    for index in progress_bar(missing, "judging", ctx.progress):
        rows = ctx.shard_rows(meta, index)
        tables = {n: s.read_shard(index) for n, s in stores.items()}
        responses = {n: t.column("response").to_pylist() for n, t in tables.items()}
        ended = {n: _finished_column(t) for n, t in tables.items()}
        judged = [_judged(names, ended, i, ctx.spec.truncated) for i in range(len(rows))]
        batch = [
            (
                row.prompt,
                row.reference,
                {n: responses[n][i] for n in judged[i]},
                {"id": row.id, "skill": row.skill},
            )
            for i, row in enumerate(rows)
        ]
        results = judge.pick_batch(batch) if hasattr(judge, "pick_batch") else [judge.pick(*b) for b in batch]
        chosen: list[ExampleSignal] = []
        for i, res in enumerate(results):
            if res.winner not in candidates:
                raise ValueError(f"judge picked '{res.winner}', not a candidate ({', '.join(names)})")
            chosen.append(example_from_table(tables[res.winner], i, ctx.spec.top_k))
        winners = [r.winner for r in results]
        extras = {
            "winner": pa.array(winners, pa.string()),
            "scores": pa.array(
                [[float(r.scores.get(n, math.nan)) for n in names] for r in results], pa.list_(pa.float32())
            ),
            "response": pa.array([responses[w][i] for i, w in enumerate(winners)], pa.string()),
            "finished": pa.array([ended[w][i] for i, w in enumerate(winners)], pa.bool_()),
            # drop: a cut-off winner (every candidate was cut off) teaches nothing in inference mode
            "teach": pa.array(
                [ended[w][i] or ctx.spec.truncated == "keep" for i, w in enumerate(winners)], pa.bool_()
            ),
        }
        store.write_shard(index, chosen, extras)
        if ctx.on_shard:
            ctx.on_shard("inference:selection", index)
    return store.path



def _finished_column(table: pa.Table) -> list[bool]:
    if "finished" in table.column_names:
        return [bool(v) for v in table.column("finished").to_pylist()]
    return [True] * table.num_rows


def _judged(names: Sequence[str], ended: dict[str, list[bool]], i: int, truncated: str) -> list[str]:
    """The candidates the judge sees for example i: with `drop`, the finished responses (all of them when every
    one was cut off, so the example still has a winner, which then teaches nothing)."""
    if truncated == "drop":
        done = [n for n in names if ended[n][i]]
        if done:
            return done
    return list(names)


def inference_stores(
    ctx: Context,
    candidates: Sequence[ModelHandle],
    common: dict[str, Any],
    version: int,
    generate_fn: GenerateFn | None,
    seed: int,
    judge_spec: JudgeSpec | None,
    judge: JudgeLike | None,
    judge_models: dict[str, Path] | None = None,
) -> tuple[dict[str, Path], Path]:
    """Each candidate's generation store, then the selection store of the judge's winners. `judge_models` maps
    the sandbox reward-model specs of `judge_spec` to their folders."""
    responder = Responder(ctx.spec, seed, generate_fn)
    stores: dict[str, Path] = {}
    for cand in candidates:
        inputs = {
            **common,
            "kind": "generation",
            "source": model_fingerprint(cand, ctx.cache_dir),
            "generation": responder.identity(cand),
        }
        stores[cand.name] = fill_candidate_store(ctx, "generation", cand, inputs, responder)

    def make_judge() -> Any:
        if judge is not None:
            return judge
        return build_judge(judge_spec or JudgeSpec(), seed, device=ctx.device, sandbox_models=judge_models)

    judge_id = {
        "spec": (judge_spec or JudgeSpec()).model_dump(mode="json"),
        "custom": None if judge is None else f"{type(judge).__module__}.{type(judge).__qualname__}",
        # the tie rule and the seed of its draw decide winners too (selections keyed without them broke ties
        # by candidate order)
        "tie_rule": TIE_RULE_VERSION,
        "seed": seed,
        "truncated": ctx.spec.truncated,
        # a sandbox reward model's folder is named by its content key (world, version, recipe, index)
        **({"built": {spec: path.name for spec, path in sorted(judge_models.items())}} if judge_models else {}),
    }
    sel_inputs = {
        "version": version,
        "kind": "inference",
        "judge": judge_id,
        "candidates": {n: p.name for n, p in stores.items()},
    }
    return stores, select_winners(ctx, stores, make_judge, sel_inputs)
