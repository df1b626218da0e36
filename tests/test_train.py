"""The shared training loop on a tiny random Llama: losses fall, resume equals an uninterrupted run, NaN stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.config import MethodSpec, TrainSpec
from harness.errors import HarnessError
from harness.registry import get_method
from harness.training.loop import forward_views, latest_checkpoint, train
from methods.base import FusionBatch, LossParts, SeqBatch, Signal
from methods.fusellm import FuseLLM
from methods.schedules import ScheduleSpec

REPO = Path(__file__).resolve().parents[1]
VOCAB = 100
SUPPORT = torch.tensor([10, 11, 12, 13, 14])
TEACHER = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])  # the fixed teacher; responses are drawn from it


def tiny_model(seed: int = 0, dropout: float = 0.0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, attention_dropout=dropout,
    )
    return LlamaForCausalLM(config)


def _sequence(gen: torch.Generator, n_prompt: int, n_response: int) -> dict[str, torch.Tensor]:
    prompt = torch.randint(20, VOCAB, (n_prompt,), generator=gen)
    response = SUPPORT[torch.multinomial(TEACHER, n_response, replacement=True, generator=gen)]
    ids = torch.cat([prompt, response])
    labels = ids.clone()
    labels[:n_prompt] = -100
    return {
        "input_ids": ids, "labels": labels,
        "topk_ids": SUPPORT.expand(len(ids), -1).clone(), "topk_logp": TEACHER.log().expand(len(ids), -1).clone(),
    }


def synthetic_items(n: int = 24, seed: int = 0) -> list[dict[Signal, dict[str, torch.Tensor]]]:
    """Items as harness/training/dataset.py yields them: per view, one example's tokens and sparse teacher."""
    gen = torch.Generator().manual_seed(seed)
    return [{Signal.TRAINING: _sequence(gen, 4, 8 + i % 3), Signal.INFERENCE: _sequence(gen, 4, 5 + i % 4)} for i in range(n)]


def collate(items: list[dict[Signal, dict[str, torch.Tensor]]]) -> FusionBatch:
    """Right-pad each view to its longest example (a stand-in for harness.training.dataset.collate)."""
    views = {}
    for signal in items[0]:
        xs = [item[signal] for item in items]
        length = max(len(x["input_ids"]) for x in xs)

        def pad(key: str, value: float, xs: list[dict[str, torch.Tensor]] = xs, length: int = length) -> torch.Tensor:
            return torch.stack([torch.cat([x[key], x[key].new_full((length - len(x[key]), *x[key].shape[1:]), value)]) for x in xs])

        mask = torch.stack([(torch.arange(length) < len(x["input_ids"])).long() for x in xs])
        views[signal] = SeqBatch(pad("input_ids", 0), mask, pad("labels", -100), pad("topk_ids", 0), pad("topk_logp", float("-inf")))
    return FusionBatch(views)


def read_log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def run(out: Path, method: str = "fusellm", *, seed: int = 0, resume: bool = False, dropout: float = 0.0, on_step: Any = None,
        method_spec: MethodSpec | None = None, **spec: Any):  # type: ignore[no-untyped-def]
    spec = {"max_steps": 30, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.1, **spec}
    m = get_method(method)(method_spec or MethodSpec(name=method))
    return train(tiny_model(0, dropout), None, synthetic_items(), collate, m, TrainSpec(**spec), out, seed=seed,
                 resume=resume, progress=False, on_step=on_step)


@pytest.mark.parametrize("method", ["fusellm", "inference-only", "profuser", "averaging"])
def test_each_method_learns_the_fixed_teacher(tmp_path: Path, method: str) -> None:
    # profuser with both terms from the start, so that each term's fall is visible (progressive: next test)
    spec = MethodSpec(name=method, **({"schedule": ScheduleSpec(name="simultaneous")} if method == "profuser" else {}))
    result = run(tmp_path, method, method_spec=spec)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 31)) and result.steps == 30
    first, last = log[0], log[-1]
    assert set(first) >= {"step", "total_steps", "loss", "lr", "components", "weights"}
    # the untrained student is near uniform over 100 ids (CE ~ log 100 = 4.6); the responses have entropy ~1.4 nats
    for key, value in last["components"].items():  # each term falls from where it first appears
        start = next(r["components"][key] for r in log if key in r["components"])
        assert value < 0.7 * start, (key, start, value)
    same_weights = next(r for r in log if r["weights"] == last["weights"])  # profuser: the start of stage 2
    assert last["loss"] < 0.7 * same_weights["loss"]
    if method != "profuser":  # 30 updates of 4 = 5 epochs of 24 items: each item's counted tokens 5 times
        (view,) = get_method(method).needs
        per_epoch = sum(int((item[view]["labels"][1:] != -100).sum()) for item in synthetic_items())
        assert result.tokens == log[-1]["tokens"] == 5 * per_epoch
    assert result.final_loss == pytest.approx(last["loss"])
    assert not result.model.training


def test_profuser_progressive_runs_only_the_views_it_weighs(tmp_path: Path) -> None:
    run(tmp_path, "profuser", max_steps=10)
    log = read_log(tmp_path)
    # switch 0.5 of 10 updates: updates 1-5 are stage 1 (w_inf=1, w_train=0), 6-10 stage 2 (0.1, 1)
    assert all(set(r["components"]) == {"ce_infer", "kl_infer"} and r["weights"]["w_train"] == 0 for r in log[:5])
    assert all(set(r["components"]) == {"ce_infer", "kl_infer", "ce_train", "fuse_train"} for r in log[5:])
    assert all(r["weights"]["w_inf"] == pytest.approx(0.1) for r in log[5:])
    stage1_tokens = log[4]["tokens"] / 5
    stage2_tokens = (log[9]["tokens"] - log[4]["tokens"]) / 5
    assert stage2_tokens > 1.5 * stage1_tokens  # the training view's tokens join in stage 2


def test_same_seed_same_curve_other_seed_other_curve(tmp_path: Path) -> None:
    a = [r["loss"] for r in (run(tmp_path / "a", max_steps=6, dropout=0.1), read_log(tmp_path / "a"))[1]]
    b = [r["loss"] for r in (run(tmp_path / "b", max_steps=6, dropout=0.1), read_log(tmp_path / "b"))[1]]
    c = [r["loss"] for r in (run(tmp_path / "c", max_steps=6, dropout=0.1, seed=1), read_log(tmp_path / "c"))[1]]
    assert a == b
    assert a != c


class _Stop(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    # 24 items, batch 4 -> 6 micro-batches per epoch, grad_accum 4 -> 2 updates per epoch (4 + 2 micro-batches);
    # 7 updates cross three epochs; dropout makes the restored RNG state matter.
    common = {"max_steps": 7, "grad_accum": 4, "dropout": 0.1, "checkpoint_every": 3, "method": "profuser"}
    full = run(tmp_path / "full", **common)

    def stop_at_3(record: dict[str, Any]) -> None:
        if record["step"] == 3:
            raise _Stop

    with pytest.raises(_Stop):
        run(tmp_path / "cut", **common, on_step=stop_at_3)
    assert latest_checkpoint(tmp_path / "cut").name == "step-3"
    with open(tmp_path / "cut" / "train_log.jsonl", "a") as fh:  # a line the resume must drop, and a torn one
        fh.write(json.dumps({"step": 4, "loss": 0.0}) + "\n" + '{"step": 5, "lo')
    resumed = run(tmp_path / "cut", **common, resume=True)

    assert resumed.steps == full.steps == 7
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    full_log, cut_log = read_log(tmp_path / "full"), read_log(tmp_path / "cut")
    assert [r["step"] for r in cut_log] == list(range(1, 8))
    for a, b in zip(full_log, cut_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["lr"] == pytest.approx(b["lr"]) and a["tokens"] == b["tokens"]
    assert resumed.tokens == full.tokens
    for p_full, p_cut in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(p_full, p_cut, atol=1e-6, rtol=0)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-6", "step-7"]


def test_a_finished_run_resumes_to_nothing(tmp_path: Path) -> None:
    first = run(tmp_path, max_steps=3)
    again = run(tmp_path, max_steps=3, resume=True)
    assert again.steps == 3 and again.final_loss == first.final_loss and len(read_log(tmp_path)) == 3
    with pytest.raises(HarnessError, match="belongs to a run of 3 updates"):
        run(tmp_path, max_steps=5, resume=True)


class _NanAtStep(FuseLLM):
    def loss(self, batch: FusionBatch, student_logits: dict[Signal, torch.Tensor], step: int, total_steps: int) -> LossParts:
        parts = super().loss(batch, student_logits, step, total_steps)
        if step == 3:  # the 4th update
            parts.total = parts.total * float("nan")
        return parts


def test_nan_loss_stops_with_the_update_named_and_keeps_checkpoints(tmp_path: Path) -> None:
    method = _NanAtStep(MethodSpec(name="fusellm"))
    with pytest.raises(HarnessError, match=r"loss is not finite at update 4 of 10.*step-2") as err:
        train(tiny_model(), None, synthetic_items(), collate, method, TrainSpec(max_steps=10, batch_size=4, checkpoint_every=2),
              tmp_path, seed=0, progress=False)
    assert err.value.where == "train"
    assert latest_checkpoint(tmp_path).name == "step-2"
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3]


def test_empty_dataset_and_wrong_tokenizer_are_user_errors(tmp_path: Path) -> None:
    method = FuseLLM(MethodSpec(name="fusellm"))
    with pytest.raises(HarnessError, match="empty"):
        train(tiny_model(), None, [], collate, method, TrainSpec(max_steps=1), tmp_path, seed=0, progress=False)

    class BigTokenizer:
        def __len__(self) -> int:
            return VOCAB + 1

    with pytest.raises(HarnessError, match="tokenizer has 101 tokens"):
        train(tiny_model(), BigTokenizer(), synthetic_items(), collate, method, TrainSpec(max_steps=1), tmp_path, seed=0, progress=False)


def test_trackers_are_optional_but_names_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.training import loop as train_module

    with pytest.raises(HarnessError, match="unknown tracker 'mlflow'"):
        train_module._trackers(["mlflow"])
    chosen = train_module._trackers(["tensorboard", "wandb"])
    err = capsys.readouterr().err
    for name in ("tensorboard", "wandb"):
        installed = bool(train_module.TRACKERS[name]())
        assert (name in chosen) == installed and (f"tracker '{name}' is not installed" in err) == (not installed)


def test_one_forward_over_both_views_equals_separate_forwards() -> None:
    model = tiny_model().eval()
    batch = collate(synthetic_items(4))
    padded, logits = forward_views(model, batch, frozenset({Signal.TRAINING, Signal.INFERENCE}))
    for signal, view in batch.views.items():
        alone = model(input_ids=view.input_ids, attention_mask=view.attention_mask).logits
        length = view.input_ids.shape[1]
        assert logits[signal].is_contiguous() and padded.views[signal].labels.shape == logits[signal].shape[:2]
        real = view.attention_mask.bool()
        torch.testing.assert_close(logits[signal][:, :length][real], alone[real], atol=1e-5, rtol=1e-5)
        assert (padded.views[signal].labels[:, length:] == -100).all()


def test_gradient_checkpointing_gives_the_same_curve(tmp_path: Path) -> None:
    assert not run(tmp_path / "plain", max_steps=3).model.is_activation_checkpointing
    assert run(tmp_path / "ckpt", max_steps=3, gradient_checkpointing=True).model.is_activation_checkpointing
    plain, ckpt = read_log(tmp_path / "plain"), read_log(tmp_path / "ckpt")
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], abs=1e-6)


@pytest.mark.parametrize(("name", "kind", "key", "value"), [
    ("fsdp", "FSDP", "fsdp_reshard_after_forward", True),  # full shard
    ("zero2", "DEEPSPEED", "zero_stage", 2),
    ("zero3", "DEEPSPEED", "zero_stage", 3),
])
def test_shipped_accelerate_configs_load(name: str, kind: str, key: str, value: object) -> None:
    from importlib import resources

    from accelerate.commands.config.config_args import load_config_from_file

    path = resources.files("harness").joinpath(f"accelerate_configs/{name}.yaml")
    config = load_config_from_file(str(path))
    assert config.distributed_type.name == kind and config.mixed_precision == "bf16"
    section = config.fsdp_config if kind == "FSDP" else config.deepspeed_config
    assert section[key] == value
    assert "gradient_accumulation_steps" not in section  # train.grad_accum decides


DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
from accelerate import PartialState
from harness.config import MethodSpec
from tests.test_train import run
spec = MethodSpec(name="profuser", schedule={{"name": "simultaneous"}})
result = run(Path(sys.argv[1]), "profuser", method_spec=spec, max_steps=4, grad_accum=2, batch_size=2)
state = PartialState()
checksum = sum(float(p.double().sum()) for p in result.model.parameters())
print(json.dumps({{"rank": state.process_index, "procs": state.num_processes, "steps": result.steps,
                   "tokens": result.tokens, "checksum": checksum}}))
"""


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate_launch(tmp_path: Path) -> None:
    # accelerate 1.x: `--cpu --num_processes 2` only forks through mpirun; torchrun + gloo on CPU is
    # `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2` (DistributedType.MULTI_CPU).
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(repo=str(REPO))))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run([*launcher, str(script), str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(r["rank"] for r in reports) == [0, 1] and all(r["procs"] == 2 and r["steps"] == 4 for r in reports)
    assert reports[0]["checksum"] == pytest.approx(reports[1]["checksum"], rel=1e-9)  # gradients were all-reduced
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # written once, by the main process
    assert all(set(r["components"]) == {"ce_infer", "kl_infer", "ce_train", "fuse_train"} for r in log)
    # global batch = 2 examples x 2 processes x 2 micro-batches = 8 = a third of the 24 items: 4 updates = 32 examples
    items = synthetic_items()
    per_item = [sum(int((it[v]["labels"][1:] != -100).sum()) for v in it) for it in items]
    assert min(per_item) * 32 <= log[-1]["tokens"] == reports[0]["tokens"] <= max(per_item) * 32
    assert latest_checkpoint(out).name == "step-4"


def test_restart_warmup_restarts_the_learning_rate_at_the_switch(tmp_path: Path) -> None:
    """The logged learning rate of a progressive run: one warm-up and decay per stage with restart_warmup."""
    staged = MethodSpec(name="profuser", schedule=ScheduleSpec(name="progressive", restart_warmup=True))
    run(tmp_path / "restart", "profuser", method_spec=staged, max_steps=20, warmup_ratio=0.2)
    run(tmp_path / "once", "profuser", max_steps=20, warmup_ratio=0.2)
    restart = [r["lr"] for r in read_log(tmp_path / "restart")]
    once = [r["lr"] for r in read_log(tmp_path / "once")]
    assert restart[:10] == pytest.approx(restart[10:])  # stage 2 repeats stage 1's curve
    assert restart[10] == 0.0 < restart[11] < restart[12] == pytest.approx(3e-3)  # warm-up again at the switch
    assert once[10] > 0.5 * 3e-3 and max(once) == pytest.approx(3e-3) and once[0] == 0.0  # one warm-up only
