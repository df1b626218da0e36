"""Which sandbox world a folder holds: its fingerprint, the reference worlds, and whether it is one of them.

Its own module so that building (build.py) and installing the packaged copy (packaged.py) can both check a
world without importing each other. The world key, the hash of the recipe, stays with the recipe in build.py.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from harness import store

# The reference worlds: fingerprints (world_fingerprint) of pinned builds at build.VERSION, which every x86-64
# machine with these library versions reproduces. tests/test_sandbox.py checks micro's on every test machine;
# rebuild and update both (and docs/sandbox.md) whenever build.VERSION changes.
REFERENCE_WORLDS: dict[tuple[str, int], str] = {
    ("micro", 0): "2f5b7e65c5d4b065b07ca05f1f0fca7fb9013efce2685fdff109277486d1e6ad",
    ("default", 0): "594d29fa9d154bd3625f494fe0811ce297e3abb345d0bb4474ad330b3b1d04ea",
}
REFERENCE_LIBRARIES: dict[str, str | None] = {
    "torch": "2.13.0+cpu",
    "transformers": "5.24.0",
    "tokenizers": "0.23.3",
}


def world_fingerprint(root: Path, models: list[str]) -> str:
    """sha256 over the models' weights: their model.safetensors concatenated in `models` order.

    The same as `cat models/{llama-knowledge,neox-reasoning,gpt2-safety}/model.safetensors | sha256sum`.
    """
    digest = hashlib.sha256()
    for name in models:
        with open(root / "models" / name / "model.safetensors", "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """The libraries whose code decides the world's bytes besides ours (model code, kernels, BPE training)."""
    versions = store.package_versions()
    return {name: versions.get(name) for name in REFERENCE_LIBRARIES}


def reference_status(
    size: str, seed: int, fingerprint: str, libraries: dict[str, str | None]
) -> dict[str, Any]:
    """Whether a world with this fingerprint is the reference world of (size, seed), and if not, a likely why."""
    reference = REFERENCE_WORLDS.get((size, seed))
    if reference is None:
        return {
            "status": "none",
            "reference": None,
            "detail": f"no reference recorded for {size} seed {seed}",
        }
    if fingerprint == reference:
        return {"status": "reference", "reference": reference, "detail": "this is the reference world"}
    others = {k: v for k, v in libraries.items() if v != REFERENCE_LIBRARIES.get(k)}
    detail = "differs from the reference world"
    if others:
        built = ", ".join(f"{k} {v}" for k, v in others.items())
        wanted = ", ".join(f"{k} {REFERENCE_LIBRARIES[k]}" for k in others)
        detail += f": built with {built}; the reference holds for {wanted} on x86-64"
    elif platform.machine() not in ("x86_64", "AMD64"):
        detail += f": the reference holds on x86-64, this machine is {platform.machine()}"
    return {"status": "differs", "reference": reference, "detail": detail}


def world_identity(root: Path) -> dict[str, Any]:
    """Which world the folder `root` holds: its fingerprint (from the files), the reference check, the library
    versions it was built with and its scores. Recorded in every run's manifest.json, printed by `sandbox show`.
    """
    meta = json.loads((root / "world.json").read_text())
    fingerprint = world_fingerprint(root, meta["models"])
    return {
        "size": meta["size"],
        "seed": meta["seed"],
        "key": meta["key"],
        "fingerprint": fingerprint,
        "reference": reference_status(meta["size"], meta["seed"], fingerprint, meta["built_with"]["libraries"]),
        "origin": meta.get("origin", "built"),  # "packaged": installed from the package (packaged.py)
        "built_with": meta["built_with"],
        "scores": meta["scores"],
    }
