"""The method registry: a decorator for built-in methods, the entry point group `harness.methods` for plugins."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, TypeVar

from harness.errors import HarnessError

if TYPE_CHECKING:
    from methods.base import FusionMethod

ENTRY_POINT_GROUP = "harness.methods"
BUILTIN_MODULES = ("methods.profuser", "methods.fusellm", "methods.inference_only", "methods.averaging", "methods.uld")

_REGISTRY: dict[str, type[FusionMethod]] = {}
_loaded = False

M = TypeVar("M", bound="type[FusionMethod]")


def register_method(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: `@register_method("profuser")` makes the method available by that name."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method '{name}' is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            _REGISTRY.setdefault(ep.name, cls)
    _loaded = True


def available_methods() -> dict[str, type[FusionMethod]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[FusionMethod]:
    methods = available_methods()
    if name not in methods:
        raise HarnessError(f"unknown method '{name}'; choose one of {', '.join(methods)} (see `harness methods`)", "method")
    return methods[name]
