"""The experiment as validated pydantic models: the only configuration object below the CLI.

A YAML preset (harness/presets/*.yaml or a user file) plus CLI overrides becomes one `Experiment`.
Every choice the ProFuser paper leaves open is a field here with a documented default.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from harness.errors import HarnessError

BASELINE = "target-base"  # the eval label of the unfused target (harness.analysis.stats.BASELINE_LABEL)
# Bounds that keep every number inside what the libraries below accept (numpy seeds are < 2**32) and catch a
# mistyped exponent at plan time instead of an overflow after the signals were computed.
MAX_SEED = 2**32 - 1
MAX_COUNT = 10**9  # documents, examples, steps, positions
MAX_TOP_K = 256  # entries kept per position of a teacher's distribution (signals.top_k, `align compare --top-k`)
MAX_BATCH = 2**16
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(value: str, what: str = "name") -> str:
    """A label or model name that becomes a folder name (eval/<label>/, run ids): one path component of a safe
    character set, so it can never escape its folder ('../x', '/abs', 'a/b') nor collide with hidden files."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not allowed: use 1-100 letters, digits and . _ + - (starting with a letter or "
            "digit), one path component"
        )
    return value


class _Strict(BaseModel):
    """Unknown fields are errors: a typo in a preset must never be silently ignored. Floats must be finite
    (`.inf`, `.nan` and `1e400` are refused, not trained with)."""

    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


class ModelSpec(_Strict):
    """One model. `path` is a spec: `sandbox:<name>`, `hf:<hub id>`, a local folder, or `gguf:<folder>#<file>`."""

    name: str = Field(min_length=1, description="Short label used in tables and file names.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "model name")
    path: str = Field(min_length=1)
    chat_template: str | None = Field(
        default=None, description="Jinja chat template overriding the tokenizer's own (None: use the tokenizer's)."
    )
    trust_remote_code: bool = Field(default=False, description="Only when the user asks for it explicitly.")


class CorpusSpec(_Strict):
    """The fusion corpus: prompts with reference answers."""

    source: Literal["sandbox", "jsonl"] = "sandbox"
    path: str | None = Field(default=None, description="JSONL with `prompt` and `reference` (and optional `id`).")
    limit: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Use only the first N examples.")

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> CorpusSpec:
        if self.source == "jsonl" and not self.path:
            raise ValueError("corpus.source 'jsonl' needs corpus.path")
        return self


class SandboxSpec(_Strict):
    """The embedded sandbox world (see harness/sandbox)."""

    size: Literal["micro", "default"] = "default"
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    disagreement: float = Field(
        default=0.0, ge=0.0, le=1.0,
        description="Share of the corpus whose reference ends in a formula one source predicts fluently while "
        "answering wrong: MinCE and the judges then disagree (harness/sandbox/disagreement.py). 0: no such source.",
    )


# What every method's key held before methods declared their own parameters: the closed MethodSpec's fields for
# ProFuser and averaging, at their defaults. `MethodSpec.key()` keeps them, so a setting that did not change
# keeps its cache key (a method's own value of such a field wins).
_KEYED_BEFORE_OWN_PARAMETERS: dict[str, Any] = {
    "beta": 1.0,
    "weighting": "uniform",
    "schedule": {"name": "progressive", "switch": 0.5, "stage1": (1.0, 0.0), "stage2": (0.1, 1.0), "restart_warmup": False},
}


class MethodSpec(_Strict):
    """The fusion method: its name, the fields every method shares (defaults follow FuseLLM / ProFuser), and the
    chosen method's own parameters, flat beside them (`method.beta`, `method.schedule.switch`).

    The own parameters are validated by the method's `Params` model (methods/base.py, MethodParams) and then
    readable as attributes (`spec.schedule`); `harness methods --verbose` lists them.
    """

    model_config = ConfigDict(extra="allow", frozen=False, allow_inf_nan=False)

    name: str = "profuser"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_name(value, "method name")

    lam: float = Field(default=0.9, ge=0.0, le=1.0, description="λ: weight of plain CE; 1-λ weights the fusion term.")
    temperature: float = Field(default=1.0, gt=0.0, le=1e6, description="Temperature applied when renormalising top-k teachers.")
    kl_direction: Literal["forward", "reverse"] = Field(
        default="forward", description="forward: KL(P_S || P_T) (FuseLLM's CE form); reverse: KL(P_T || P_S) over the top-k."
    )
    target_is_candidate: bool = Field(
        default=True, description="Whether the target's own signals compete in MinCE / judge selection (paper: yes)."
    )

    @model_validator(mode="after")
    def _own_parameters(self) -> MethodSpec:
        """Validate the fields beyond the shared ones against the method's `Params`. A field another method declares,
        given at that method's default, is dropped: presets and dumps written for one method (`beta: 1.0`) keep
        working when `--method` picks another. An unknown method name is left to `plan`, which names the choices."""
        from harness.registry import available_methods  # lazy: the methods import this module

        methods = available_methods()
        cls = methods.get(self.name)
        if cls is None:
            return self
        own = cls.Params.model_fields
        given = dict(self.__pydantic_extra__ or {})
        for key, value in list(given.items()):
            if key not in own:
                if not any(_is_default_of(m.Params, key, value) for m in methods.values()):
                    raise _parameter_error(self.name, key, value, list(own))
                del given[key]
        params = cls.Params.model_validate(given)
        self.__pydantic_extra__ = {k: getattr(params, k) for k in own}
        return self

    def own_parameters(self) -> dict[str, Any]:
        """The method's own parameters (validated), without the shared fields."""
        return dict(self.__pydantic_extra__ or {})

    def key(self) -> dict[str, Any]:
        """What a cache key holds of the method: every field, shared and own (plus the fields all keys held before
        methods declared their own parameters, at their old defaults)."""
        return {**_KEYED_BEFORE_OWN_PARAMETERS, **self.model_dump()}


SHARED_METHOD_FIELDS = tuple(MethodSpec.model_fields)


def _is_default_of(params: type[BaseModel], key: str, value: Any) -> bool:
    """Whether `value` is the default of `params`' field `key` (False when it has no such field or the value is not
    valid for it)."""
    if key not in params.model_fields:
        return False
    try:
        return getattr(params.model_validate({key: value}), key) == getattr(params(), key)
    except ValidationError:
        return False


def _parameter_error(method: str, key: str, value: Any, own: list[str]) -> ValidationError:
    """One line naming the method's valid fields, located at `method.<key>`."""
    shared = ", ".join(f for f in SHARED_METHOD_FIELDS if f != "name")
    message = (f"method '{method}' has no parameter '{key}'; its own: {', '.join(own) or 'none'}; every method's: "
               f"{shared} (see `harness methods --verbose`)")
    return ValidationError.from_exception_data(
        "MethodSpec", [InitErrorDetails(type=PydanticCustomError("method_parameter", message), loc=(key,), input=value)]
    )


class VLLMSpec(_Strict):
    """vLLM engine settings for inference-mode generation (used when signals.backend picks vllm).

    Tensor parallel splits each candidate over `tensor_parallel_size` GPUs inside one process; data parallel is
    `--num-processes N` with tensor_parallel_size 1 (each process generates its own shards on its own GPU).
    Engine settings are not part of the signal cache key: they change speed and memory, not the decoding.
    """

    tensor_parallel_size: int = Field(default=1, ge=1, le=MAX_BATCH)
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(default=None, ge=16, le=MAX_COUNT)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"


class SignalSpec(_Strict):
    """Signal extraction: top-k distributions, generation settings for inference mode, sharding."""

    top_k: int = Field(default=10, ge=1, le=MAX_TOP_K)
    max_length: int = Field(default=256, ge=8, le=MAX_COUNT, description="Max tokens of prompt + response in teacher-forced passes.")
    max_new_tokens: int = Field(default=64, ge=1, le=MAX_COUNT)
    truncated: Literal["drop", "keep"] = Field(
        default="drop",
        description="What inference mode does with a response cut off at max_new_tokens (it never gets a stop "
        "token): drop: the judge picks among the finished responses, and an example whose candidates were all cut "
        "off teaches nothing in inference mode; keep: cut-off responses are judged like the others and taught "
        "without a stop token.",
    )
    do_sample: bool = False
    gen_temperature: float = Field(default=1.0, gt=0.0, le=1e6)
    stop: list[str] = Field(default_factory=list, description="Stop strings for generation.")
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH)
    shard_size: int = Field(default=256, ge=1, le=MAX_COUNT, description="Examples per stored shard (unit of resume).")
    backend: Literal["auto", "hf", "vllm"] = "auto"
    vllm: VLLMSpec = Field(default_factory=VLLMSpec)
    alignment: str = Field(
        default="span",
        description="Cross-tokenizer alignment strategy (harness/signals/alignment.py): span, dtw-exact, dtw-mined, "
        "dtw-mined-fusellm, or a plugin's name; checked at plan time.",
    )


class JudgeSpec(_Strict):
    """Judges of inference mode: the reference scorer, or reward models that vote."""

    kind: Literal["reference", "reward-models"] = "reference"
    models: list[str] = Field(default_factory=list, description="Reward-model specs when kind is reward-models.")

    @model_validator(mode="after")
    def _models_for_rm(self) -> JudgeSpec:
        if self.kind == "reward-models" and not self.models:
            raise ValueError("judges.kind 'reward-models' needs judges.models")
        return self


class LoraSpec(_Strict):
    """LoRA adapters through peft (harness/training/lora.py): every method can train them; fits 7B fusion on small GPUs."""

    r: int = Field(default=16, ge=1, le=MAX_BATCH)
    alpha: int = Field(default=32, ge=1, le=MAX_COUNT)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    targets: list[str] | None = Field(default=None, description="Module names (None: peft's default for the model).")
    merge: bool = Field(default=True, description="Merge into the weights when saving (False: save the adapter only).")


class TrainSpec(_Strict):
    """The shared training loop (harness/training/loop.py)."""

    epochs: float = Field(default=1.0, gt=0.0, le=1e6)
    max_steps: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Overrides epochs when set.")
    batch_size: int = Field(default=8, ge=1, le=MAX_BATCH)
    grad_accum: int = Field(default=1, ge=1, le=MAX_BATCH)
    lr: float = Field(default=2e-5, gt=0.0, le=1e3)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1e3)
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=1.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0, le=1e6)
    max_length: int = Field(default=256, ge=8, le=MAX_COUNT)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(default=0, ge=0, le=MAX_COUNT, description="Steps between checkpoints (0: only at the end).")
    log_every: int = Field(default=1, ge=1, le=MAX_COUNT)
    lora: LoraSpec | None = Field(default=None, description="Train LoRA adapters instead of all weights.")


class EvalSpec(_Strict):
    """Evaluation through lm-eval."""

    tasks: list[str] = Field(default_factory=lambda: ["sandbox"])
    limit: int | None = Field(default=None, ge=0, le=MAX_COUNT, description="Documents per task; 0 or None lifts the cap.")
    task_limits: dict[str, int] = Field(
        default_factory=dict,
        description="Per task or group (e.g. {sandbox: 0}): documents, 0 for all, instead of `limit`. "
        "The command line's --limit sets `limit` and clears these.",
    )
    num_fewshot: int | None = Field(default=None, ge=0, le=1000)
    batch_size: int = Field(default=16, ge=1, le=MAX_BATCH)
    max_gen_toks: int = Field(
        default=256, ge=1, le=MAX_COUNT,
        description="Cap on generated tokens (lm-eval's default, 256: GSM8K's chain of thought needs it); a task's "
        "own smaller cap wins (the sandbox tasks').",
    )
    backend: Literal["hf", "vllm"] = "hf"
    compare_sources: bool = Field(default=True, description="Also evaluate each source (rows of the comparison table).")
    add_sandbox_skills: bool = Field(
        default=True,
        description="When every model is a sandbox specialist and the tasks are real benchmarks only, also evaluate "
        "the sandbox skills: the tiny specialists sit near chance on real benchmarks, and the skills are where "
        "fusion shows (docs/design.md). false: only the tasks asked for.",
    )

    @field_validator("task_limits")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [k for k, v in value.items() if not 0 <= v <= MAX_COUNT]
        if bad:
            raise ValueError(f"task_limits must be between 0 (every document) and {MAX_COUNT}; got {', '.join(bad)}")
        return value


class Experiment(_Strict):
    """Everything that determines a run."""

    name: str = "experiment"
    preset: str = "sandbox"
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Seed of training and evaluation (numpy needs < 2**32).")
    sandbox: SandboxSpec | None = None
    target: ModelSpec
    sources: list[ModelSpec] = Field(min_length=1)
    corpus: CorpusSpec = CorpusSpec()
    method: MethodSpec = Field(default_factory=MethodSpec)
    signals: SignalSpec = SignalSpec()
    judges: JudgeSpec = JudgeSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    data_dir: str | None = Field(default=None, description="Local benchmark data (laid out as shared/data).")
    cache_dir: str | None = Field(default=None, description="Content-addressed cache (default: ~/.cache/fusion-harness).")

    @model_validator(mode="after")
    def _distinct_labels(self) -> Experiment:
        """Every model name is a row and an eval/<label>/ folder of the run: a source named like the method or
        `target-base`, or two models with one name, would put one model's scores in another's row."""
        names = [self.target.name] + [s.name for s in self.sources]
        seen: set[str] = set()
        for where, name in zip(["target.name", *(f"sources[{i}].name" for i in range(len(self.sources)))], names, strict=True):
            if name in (BASELINE, self.method.name):
                what = "the unfused target's row" if name == BASELINE else f"the row of method '{name}'"
                raise ValueError(f"{where} '{name}' is reserved for {what}; rename the model")
            if name in seen:
                raise ValueError(f"{where} '{name}' is used twice; model names must be unique")
            seen.add(name)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("harness.presets").iterdir() if p.name.endswith(".yaml"))


def _read_preset(name_or_file: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_file)
    if name_or_file.endswith((".yaml", ".yml")) or path.exists():
        if path.is_dir():
            raise HarnessError(f"preset '{name_or_file}' is a folder; give a preset name or a .yaml file", "config")
        if not path.is_file():
            raise HarnessError(f"preset file '{name_or_file}' does not exist", "config")
        try:
            text, label = path.read_bytes(), path.stem
        except OSError as exc:
            raise HarnessError(f"preset file '{name_or_file}' cannot be read ({exc.strerror or exc})", "config") from None
    else:
        res = resources.files("harness.presets").joinpath(f"{name_or_file}.yaml")
        if not res.is_file():
            raise HarnessError(
                f"unknown preset '{name_or_file}'; choose one of {', '.join(preset_names())} or give a .yaml file", "config"
            )
        text, label = res.read_bytes(), name_or_file
    try:
        data = yaml.safe_load(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise HarnessError(f"preset '{name_or_file}' is not UTF-8 text", "config") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise HarnessError(f"preset '{name_or_file}' is not valid YAML{at}", "config") from None
    if not isinstance(data, dict):
        raise HarnessError(f"preset '{name_or_file}' must be a YAML mapping of experiment fields", "config")
    return label, data


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` (a list element by its index: `sources.0.path`); a one-line error when the path runs through
    something that is not a section (`train.lr.x`, a preset's `method: profuser` where a mapping belongs)."""
    parts = dotted.split(".")
    if any(not p.strip() for p in parts):
        raise HarnessError(f"'{dotted}' is not a field path (expected names joined by dots, e.g. train.lr)", "config")
    node: Any = data
    for depth, key in enumerate(parts):
        here = ".".join(parts[:depth]) or "the experiment"
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise HarnessError(f"{here} is a list of {len(node)}; '{key}' in '{dotted}' is not an index of it", "config")
            index = int(key)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            kind = type(node).__name__ if node is not None else "empty"
            hint = f" (write `{here}: {{{parts[depth]}: ...}}` in the preset)" if isinstance(node, str) else ""
            raise HarnessError(f"{here} is a value ({kind}), not a section, so '{dotted}' cannot be set{hint}", "config")
        if last:
            node[key] = value
        else:
            node = node.setdefault(key, {})


def format_validation_error(exc: ValidationError) -> str:
    """The first problem of a pydantic error as `field.path: message`, one line."""
    err = exc.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling against `harness run --help` and the presets)"
    shown = repr(err.get("input"))
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    plain = ("extra_forbidden", "missing", "value_error", "method_parameter")
    extra = f" (got {shown})" if err["type"] not in plain and "input" in err else ""
    more = len(exc.errors()) - 1
    tail = f"; and {more} more problem(s)" if more else ""
    return f"{loc}: {msg}{extra}{tail}" if loc else f"{msg}{tail}"


def with_overrides(exp: Experiment, overrides: dict[str, Any], where: str = "config") -> Experiment:
    """A validated copy of `exp` with dotted-key overrides applied (`--grid` cells, seeds); `exp` is left alone.
    A bad field or value is a one-line HarnessError that starts with `where`."""
    data = exp.model_dump()
    if overrides.get("method.name", exp.method.name) != exp.method.name:
        data["method"] = _carried_to(str(overrides["method.name"]), data["method"])
    for key, value in overrides.items():
        try:
            _set_dotted(data, key, value)
        except HarnessError as exc:
            raise HarnessError(f"{where}: {exc}", "config") from None
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise HarnessError(f"{where}: {format_validation_error(exc)}", "config") from None


def _carried_to(method: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The method fields of an experiment whose method is swapped for `method` (a grid cell, `ablate -m`): the
    shared ones and the old method's own parameters that `method` declares too; the others were the old method's."""
    from harness.registry import available_methods  # lazy: the methods import this module

    cls = available_methods().get(method)
    own = set(cls.Params.model_fields) if cls is not None else set(fields)
    return {k: v for k, v in fields.items() if k in SHARED_METHOD_FIELDS or k in own}


def belongs_to_other_methods(method: str, field: str) -> bool:
    """Whether `method.<field>` is another registered method's own parameter that `method` does not have (False for
    shared fields, misspellings and unknown methods, which validation reports)."""
    from harness.registry import available_methods

    methods = available_methods()
    if field in SHARED_METHOD_FIELDS or method not in methods or field in methods[method].Params.model_fields:
        return False
    return any(field in cls.Params.model_fields for cls in methods.values())


def load_experiment(preset: str = "sandbox", overrides: dict[str, Any] | None = None) -> Experiment:
    """Preset (name or YAML file) + dotted-key overrides -> validated Experiment, or a one-line HarnessError."""
    label, data = _read_preset(preset)
    data.setdefault("preset", label)
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise HarnessError(format_validation_error(exc), "config") from None
