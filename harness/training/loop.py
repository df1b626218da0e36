"""The shared training loop: any fusion method's loss, on CPU, one GPU, DDP, FSDP or DeepSpeed (via accelerate).

The loop owns the optimizer (AdamW), the LR schedule (cosine with warm-up), gradient accumulation and
clipping, precision, checkpoints and logs; the method only turns a batch and the student's logits into a
`LossParts`. The same code runs single-process and under `accelerate launch` (e.g. `accelerate launch --cpu
--num_processes 2`, or `--config_file` one of harness/accelerate_configs/*.yaml).

- Batch sizes: `TrainSpec.batch_size` is per process and per micro-batch; one optimizer update sees
  batch_size x processes x grad_accum examples (the global batch). An epoch has ceil(micro-batches per
  process / grad_accum) updates (the last one of an epoch may accumulate fewer micro-batches).
- Steps: `step` given to the method is the 0-based index of the update being computed; `step` in the log
  and in `checkpoints/step-N` counts completed updates (1-based).
- Stages: before the first update of each of the method's stages (`FusionMethod.stage_starts`), and when a run
  resumes inside one, the loop calls `method.begin_stage` with the model lent for scoring (no gradients) and the
  training cache folder (fusechat3 computes its DPO reference there).
- Views: the method's active views at a step (`FusionMethod.views_at`) run in one forward pass, right-padded
  to a common length and concatenated along the batch, so DDP/FSDP/DeepSpeed see one forward per backward.
- Precision: `auto` is bf16 autocast on a GPU that supports it (fp32 master weights), fp32 on CPU; under
  `accelerate launch` with a mixed_precision setting, the launcher's choice wins.
- Checkpoints: `out_dir/checkpoints/step-N` (accelerate save_state: model, optimizer, LR schedule, per-process
  RNG states, plus trainer_state.json and SHA256SUMS, written last), written to a hidden temporary folder and
  renamed, every `checkpoint_every` updates and at the end; the newest `KEEP_CHECKPOINTS` are kept. A full disk
  while saving is a one-line error. Resuming verifies the newest checkpoint's checksums (a damaged one is moved
  aside with a one-line warning and the one before it is used), loads it,
  skips the consumed micro-batches of its epoch (accelerate's skip_first_batches) and continues with the same
  data order (a seedable sampler: seed + epoch) and RNG state, so the loss curve equals an uninterrupted run's.
- Log: one JSON line per logged update in `out_dir/train_log.jsonl`: {"step", "total_steps", "loss", "lr",
  "grad_norm", "tokens", "components": {...}, "weights": {...}}; loss and components are means over the
  update's micro-batches and processes, lr is the rate the update used, tokens counts trained target tokens
  so far (all views and processes). On resume, lines after the checkpoint's step are dropped.
- A non-finite loss or gradient norm stops training with a HarnessError naming the update, before the
  optimizer step; the checkpoints already written are left as they are.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, is_tensorboard_available, is_wandb_available, set_seed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup

from harness import distributed
from harness.config import TrainSpec
from harness.errors import HarnessError
from harness.store import atomic_write_json, atomic_write_text, seal, verified, writing
from methods.base import FusionBatch, FusionMethod, SeqBatch, StageContext, View
from methods.schedules import lr_factor

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
ENGINE_FILE = "engine.json"  # distributed.engine(): engine, processes, sharding and checkpoint format
KEEP_CHECKPOINTS = 2
TRACKERS = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    """The trained model (unwrapped from any accelerate wrapper) and what training cost."""

    model: torch.nn.Module
    steps: int  # optimizer updates completed, including those before a resume
    tokens: int  # trained target tokens, summed over views, micro-batches and processes
    seconds: float  # wall time in the loop, summed over resumed segments
    final_loss: float | None  # the last update's loss (None if the run had no update to do)
    log_path: Path
    checkpoint: Path | None  # the newest checkpoint folder
    # FSDP / ZeRO-3 only: the gathered full weights (main process) for `model.save_pretrained(..., state_dict=)`,
    # since the unwrapped model's own parameters are shards there. None otherwise.
    state_dict: dict[str, torch.Tensor] | None = None


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The completed checkpoint with the most updates under `out_dir/checkpoints`, or None."""
    found = [
        (int(p.name.split("-", 1)[1]), p)
        for p in (out_dir / CHECKPOINTS).glob("step-*")
        if p.name.split("-", 1)[1].isdigit() and (p / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def forward_views(model: torch.nn.Module, batch: FusionBatch, views: frozenset[View]) -> tuple[FusionBatch, dict[View, torch.Tensor]]:
    """Student logits for `views` in one forward pass; returns the batch padded to match them and the logits.

    Views are right-padded to a common length (`pad_views`) and concatenated along the batch; each view's
    logits are a contiguous slice [B_view, T, V] of the one output.
    """
    order = sorted(views, key=lambda v: v.value)
    if not order:
        return batch, {}
    padded = pad_views(batch, views)
    input_ids = torch.cat([padded.views[v].input_ids for v in order])
    attention_mask = torch.cat([padded.views[v].attention_mask for v in order])
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if len(order) == 1:  # no split: its backward would copy the whole gradient once more
        return padded, {order[0]: logits}
    parts = torch.split(logits, [padded.views[v].input_ids.shape[0] for v in order])
    return padded, dict(zip(order, parts, strict=True))


def pad_views(batch: FusionBatch, views: frozenset[View]) -> FusionBatch:
    """`views` right-padded to their common length: pad token 0, attention 0, labels -100, absent teacher entries."""
    length = max(batch.views[v].input_ids.shape[1] for v in views)
    return FusionBatch({**batch.views, **{v: _pad(batch.views[v], length) for v in views}})


def _pad(view: SeqBatch, length: int) -> SeqBatch:
    extra = length - view.input_ids.shape[1]
    if extra == 0:
        return view
    return SeqBatch(
        F.pad(view.input_ids, (0, extra), value=0),
        F.pad(view.attention_mask, (0, extra), value=0),
        F.pad(view.labels, (0, extra), value=-100),
        F.pad(view.topk_ids, (0, 0, 0, extra), value=0),
        F.pad(view.topk_logp, (0, 0, 0, extra), value=float("-inf")),
        view.index,
    )


def counted_tokens(batch: FusionBatch, views: frozenset[View]) -> int:
    """Target tokens the losses count in `views` (labels != -100, excluding position 0)."""
    return int(sum((batch.views[v].labels[:, 1:] != -100).sum() for v in views))


def _mixed_precision(precision: str) -> str | None:
    if precision == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION"):
            return None  # `accelerate launch` decided
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def _trackers(requested: Sequence[str]) -> list[str]:
    chosen = []
    for name in requested:
        if name not in TRACKERS:
            raise HarnessError(f"unknown tracker '{name}'; choose from {', '.join(TRACKERS)}", "train")
        if TRACKERS[name]():
            chosen.append(name)
        else:
            print(f"harness: train: tracker '{name}' is not installed; logging to {LOG_FILE} only", file=sys.stderr)
    return chosen


def _read_log(path: Path, up_to: int) -> list[str]:
    """Lines of an existing log with step <= up_to (a torn last line from a crash is dropped)."""
    if not path.is_file():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= up_to:
                kept.append(line + "\n")
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return kept


class _UpdateStats:
    """Sums over the micro-batches of one update, reduced across processes once per update."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.components: dict[str, torch.Tensor | float] = {}
        self.micro = 0
        self.tokens = 0

    def add(self, total: torch.Tensor, components: dict[str, torch.Tensor], tokens: int) -> None:
        self.loss = self.loss + total.detach().float()
        for key, value in components.items():
            self.components[key] = self.components.get(key, 0.0) + value.detach().float()
        self.micro += 1
        self.tokens += tokens

    def reduce(self, accelerator: Accelerator) -> tuple[float, dict[str, float], int]:
        keys = sorted(self.components)
        local = torch.stack(
            [torch.as_tensor(v, dtype=torch.float32, device=accelerator.device) for v in (self.loss, *(self.components[k] for k in keys))]
            + [torch.tensor(float(self.micro), device=accelerator.device), torch.tensor(float(self.tokens), device=accelerator.device)]
        )
        total = accelerator.reduce(local, reduction="sum").tolist()
        micro = max(total[-2], 1.0)
        return total[0] / micro, {k: v / micro for k, v in zip(keys, total[1:-2], strict=True)}, int(total[-1])


def _stop_if_not_finite(loss: float, grad_norm: float | None, update: int, total_steps: int, out_dir: Path) -> None:
    """Raised on every process alike: loss and gradient norm are already reduced across processes."""
    bad = "loss" if not math.isfinite(loss) else "gradient norm" if grad_norm is not None and not math.isfinite(grad_norm) else None
    if bad:
        where = latest_checkpoint(out_dir)
        kept = f"the last good checkpoint is '{where}'" if where else "no checkpoint was written yet"
        raise HarnessError(
            f"{bad} is not finite at update {update} of {total_steps}; training stopped and {kept} (try a lower train.lr)", "train"
        )


def _save_checkpoint(accelerator: Accelerator, out_dir: Path, state: dict[str, Any]) -> Path:
    """save_state into a hidden folder, then rename it to checkpoints/step-N (all processes must call this)."""
    root = out_dir / CHECKPOINTS
    final, tmp = root / f"step-{state['step']}", root / f".step-{state['step']}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        with writing(tmp):
            accelerator.save_state(str(tmp))
    except HarnessError:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial checkpoint (nor its disk space) behind
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / STATE_FILE, state)
        with writing(tmp):
            seal(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        older = sorted((p for p in root.glob("step-*") if p.name.split("-", 1)[1].isdigit()), key=lambda p: int(p.name[5:]))
        for old in older[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _intact_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint whose files match their checksums; damaged ones are moved aside on the way."""
    while (checkpoint := latest_checkpoint(out_dir)) is not None:
        if verified(checkpoint, "training checkpoint"):
            return checkpoint
    return None


def _stage_context(
    accelerator: Accelerator, model: torch.nn.Module, dataset: Dataset, collate_fn: Callable[[list[Any]], FusionBatch],
    batch_size: int, out_dir: Path, step: int, total_steps: int, first_update: bool,
) -> StageContext:
    """The model as it is now, lent to `FusionMethod.begin_stage`: the dataset in order, scored without gradients."""

    def batches() -> Any:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
        return (batch.to(accelerator.device) for batch in loader)

    def score(batch: FusionBatch, views: frozenset[View]) -> tuple[FusionBatch, dict[View, torch.Tensor]]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                return forward_views(model, batch, views)
        finally:
            model.train(was_training)

    return StageContext(batches, score, out_dir, accelerator.is_main_process, step, total_steps, first_update)


def _start_or_resume(accelerator: Accelerator, out_dir: Path, resume: bool, total_steps: int, seed: int) -> dict[str, Any]:
    """Load the newest checkpoint (model, optimizer, schedule, RNG) and trim the log to it, or start clean."""
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "tokens": 0, "seconds": 0.0, "loss": None}
    found = _intact_checkpoint(out_dir) if resume and accelerator.is_main_process else None
    checkpoint = Path(p) if (p := distributed.from_main(str(found) if found else None)) else None
    if checkpoint is not None:
        saved = json.loads((checkpoint / STATE_FILE).read_text())
        if saved["total_steps"] != total_steps or saved["seed"] != seed:
            raise HarnessError(
                f"checkpoint '{checkpoint}' belongs to a run of {saved['total_steps']} updates with seed {saved['seed']}, "
                f"this one has {total_steps} with seed {seed}; resume=False (or a new output folder) starts over",
                "train",
            )
        state.update(saved)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        log_path = out_dir / LOG_FILE
        atomic_write_text(log_path, "".join(_read_log(log_path, state["step"])))
    accelerator.wait_for_everyone()
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
    return state


def train(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], FusionBatch],
    method: FusionMethod,
    spec: TrainSpec,
    out_dir: Path,
    *,
    seed: int,
    resume: bool = True,
    progress: bool = True,
    trackers: Sequence[str] = (),
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train `model` on `dataset` with `method`'s loss; checkpoints and log under `out_dir`.

    tokenizer: the target's tokenizer (or None); only checked against the model's embedding size.
    collate_fn: items -> FusionBatch holding every view in `method.needs`.
    resume: continue from the newest checkpoint in `out_dir` if there is one; False starts over (the old
        checkpoints and log in `out_dir` are replaced).
    trackers: accelerate trackers to log to as well ("tensorboard", "wandb"), used when installed.
    on_step: called on every process after each update with its log record (after logging and checkpointing).
    """
    out_dir = Path(out_dir)
    set_seed(seed)
    accelerator = Accelerator(
        gradient_accumulation_steps=spec.grad_accum,
        mixed_precision=_mixed_precision(spec.precision),
        log_with=_trackers(trackers) or None,
        project_dir=str(out_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    distributed.fsdp_over_cpu_processes(accelerator)  # an FSDP launch over CPU processes shards, as on GPUs
    # its transformers (or PEFT) API: through nn.Module.__getattr__ mypy would type these `Tensor | Module`
    hf_model: Any = model
    if tokenizer is not None and len(tokenizer) > hf_model.get_input_embeddings().num_embeddings:
        raise HarnessError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding only {hf_model.get_input_embeddings().num_embeddings}; "
            "is the target's tokenizer the right one?",
            "train",
        )
    if spec.gradient_checkpointing:  # non-reentrant: works with DDP, FSDP and frozen inputs
        if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf_model.config.use_cache = False
    model.train()

    if len(dataset) == 0:  # type: ignore[arg-type]
        raise HarnessError("the fusion dataset is empty: nothing to train on", "train")
    loader = DataLoader(
        dataset, batch_size=spec.batch_size, shuffle=True, collate_fn=collate_fn, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    updates_per_epoch = math.ceil(len(loader) / spec.grad_accum)
    total_steps = spec.max_steps or max(1, math.ceil(spec.epochs * updates_per_epoch))
    # accelerate steps a prepared scheduler once per process per update, hence the factor.
    procs = accelerator.num_processes
    starts = method.stage_starts(total_steps)
    if starts == [0]:
        scheduler = get_cosine_schedule_with_warmup(optimizer, round(spec.warmup_ratio * total_steps) * procs, total_steps * procs)
    else:  # a warm-up and a cosine decay per stage (ScheduleSpec.restart_warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s // procs, starts, total_steps, spec.warmup_ratio)
            * method.lr_scale(sum(start <= s // procs for start in starts) - 1),
        )
    scheduler = accelerator.prepare(scheduler)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / ENGINE_FILE, distributed.engine(accelerator))

    log_path = out_dir / LOG_FILE
    state = _start_or_resume(accelerator, out_dir, resume, total_steps, seed)
    if accelerator.log_with:
        accelerator.init_trackers(out_dir.name, config={"method": method.name, **spec.model_dump(), "seed": seed})

    step, epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
    tokens, final_loss = state["tokens"], state["loss"]
    stage_now: int | None = None
    started = time.perf_counter()
    stats = _UpdateStats()
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[loss]}"), TimeRemainingColumn())
    with Progress(*columns, disable=not (progress and accelerator.is_main_process)) as bar:
        task = bar.add_task("train", total=total_steps, completed=step, loss="")
        while step < total_steps:
            loader.set_epoch(epoch)
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            seen = skip
            for batch in batches:
                seen += 1
                if (stage := sum(s <= step for s in starts) - 1) != stage_now:
                    # no update of the stage is done yet (checkpoints fall between updates, so this holds on resume too)
                    first = step == starts[stage]
                    context = _stage_context(
                        accelerator, model, dataset, collate_fn, spec.batch_size, out_dir, step, total_steps, first
                    )
                    method.begin_stage(stage, context)
                    stage_now = stage
                views = method.views_at(step, total_steps)
                with accelerator.accumulate(model):
                    batch, logits = forward_views(model, batch, views)
                    parts = method.loss(batch, logits, step, total_steps)
                    del logits  # the loss keeps what its backward needs; the raw logits can go now
                    stats.add(parts.total, parts.components, counted_tokens(batch, views))
                    if parts.total.requires_grad:
                        accelerator.backward(parts.total)
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
                        grad_norm = None if norm is None else float(norm)
                        loss, components, update_tokens = stats.reduce(accelerator)
                        _stop_if_not_finite(loss, grad_norm, step + 1, total_steps, out_dir)
                        lr = float(optimizer.param_groups[0]["lr"])
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                tokens += update_tokens
                final_loss = loss
                stats = _UpdateStats()
                record = {
                    "step": step, "total_steps": total_steps, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                    "tokens": tokens, "components": components, "weights": {k: float(v) for k, v in parts.weights.items()},
                }
                if accelerator.is_main_process and (step % spec.log_every == 0 or step == total_steps):
                    with open(log_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                if accelerator.log_with:
                    flat = {"loss": loss, "lr": lr, **{f"components/{k}": v for k, v in components.items()}}
                    accelerator.log({**flat, **{f"weights/{k}": v for k, v in record["weights"].items()}}, step=step)
                if (spec.checkpoint_every and step % spec.checkpoint_every == 0) or step == total_steps:
                    end_of_epoch = seen == len(loader)
                    _save_checkpoint(accelerator, out_dir, {
                        "step": step, "total_steps": total_steps, "seed": seed,
                        "epoch": epoch + 1 if end_of_epoch else epoch, "batch_in_epoch": 0 if end_of_epoch else seen,
                        "tokens": tokens, "seconds": state["seconds"] + time.perf_counter() - started, "loss": loss,
                    })
                bar.update(task, completed=step, loss=f"loss {loss:.4f}")
                if on_step is not None:
                    on_step(record)
                if step >= total_steps:
                    break
            epoch, skip = epoch + 1, 0
    seconds = state["seconds"] + time.perf_counter() - started
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    sharded = accelerator.distributed_type == DistributedType.FSDP or (
        accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3
    )
    full_state = accelerator.get_state_dict(model) if sharded else None  # a collective: every process calls it
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    return TrainResult(unwrapped, step, tokens, round(seconds, 3), final_loss, log_path, latest_checkpoint(out_dir), full_state)
