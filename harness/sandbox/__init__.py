"""The sandbox world: a small, fully local world where each source's strength is known by construction.

Three synthetic skills (skills.py), three tiny source models of different architectures and tokenizers, each
trained mostly on one skill (pretrain.py, build.py), a fusion corpus, evaluation files with lm-eval tasks
(tasks/sandbox/) and the scorer they share (scoring.py). `build_world` builds it once into the cache.
"""

from __future__ import annotations

from typing import Any

_BUILD_API = ("World", "build_world", "load_world", "world_summary")


def __getattr__(name: str) -> Any:
    """Lazy re-export of the build API, so importing the scorer does not import torch and transformers."""
    if name in _BUILD_API:
        from harness.sandbox import build

        return getattr(build, name)
    raise AttributeError(f"module 'harness.sandbox' has no attribute {name!r}")


__all__ = list(_BUILD_API)
