"""The reference default world, shipped with the package: its three specialists' weights and tokenizers.

Building the default world trains three specialists with pinned CPU kernels: about 7 minutes on 2 idle cores,
most of a newcomer's first run. The bytes are fixed by the seed (docs/sandbox.md, "The same world on every
machine"), so the package carries them (`reference/<size>-<seed>/`, 9 MB) and `build_world` installs them into
the cache instead: it copies the model folders, regenerates the text splits from the seed, and accepts the copy
only when its world key equals the current recipe's and its fingerprint equals `REFERENCE_WORLDS`. Anything
else (a recipe or VERSION change not yet repackaged, a damaged file) falls back to building. A machine whose
libraries or CPU would build other bytes still gets the reference world this way.

`harness sandbox build --from-scratch` trains the world here instead; tests/test_sandbox.py checks that the
packaged files are the reference world, and the slow suite that a build from scratch gives the same bytes.
After a change that moves the reference, rebuild from scratch, update REFERENCE_WORLDS, and run
`python -m harness.sandbox.packaged <world folder>` to refresh the packaged copy.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from harness.sandbox.identity import world_fingerprint

PACKAGED = Path(__file__).parent / "reference"
MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)


def packaged_root(size: str, seed: int) -> Path | None:
    """The packaged copy of the (size, seed) world, or None when the package carries none."""
    root = PACKAGED / f"{size}-{seed}"
    return root if (root / "world.json").is_file() else None


def install(size: str, seed: int, key: str, reference: str | None, into: Path) -> dict[str, Any] | None:
    """Copy the packaged (size, seed) world's models into `into/models`; its world.json meta, or None.

    None (and nothing left in `into/models`) when there is no packaged world, when it was packaged for another
    world key, or when the copied weights do not have the `reference` fingerprint.
    """
    root = packaged_root(size, seed)
    if root is None or reference is None:
        return None
    meta = json.loads((root / "world.json").read_text())
    if meta.get("key") != key:
        return None
    for name in meta["models"]:
        shutil.copytree(root / "models" / name, into / "models" / name)
    if world_fingerprint(into, meta["models"]) != reference:
        shutil.rmtree(into / "models", ignore_errors=True)
        return None
    return {**meta, "origin": "packaged"}


def export(world_root: Path, dest: Path = PACKAGED) -> Path:
    """Write the world at `world_root` (a sealed cache entry) as the packaged copy of its (size, seed)."""
    meta = json.loads((world_root / "world.json").read_text())
    meta.pop("origin", None)
    out = dest / f"{meta['size']}-{meta['seed']}"
    shutil.rmtree(out, ignore_errors=True)
    for name in meta["models"]:
        (out / "models" / name).mkdir(parents=True)
        for file in MODEL_FILES:
            shutil.copy2(world_root / "models" / name / file, out / "models" / name / file)
    (out / "world.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(export(Path(sys.argv[1])))
