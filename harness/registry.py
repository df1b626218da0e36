"""Plugin registries: a decorator for built-in classes, an entry point group for plugins, a one-line error naming
the choices. Fusion methods live here (`harness.methods`); the alignment strategies use the same `Registry`
(harness/signals/alignment.py, `harness.alignments`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from harness.errors import HarnessError
from methods.params import Parameter

if TYPE_CHECKING:
    from methods.base import FusionMethod

ENTRY_POINT_GROUP = "harness.methods"  # plugins in other packages (docs/plugins.md)
# The built-in methods: imported on first use, each registering itself with @register_method. This list is the
# only place they are registered (pyproject.toml declares no entry points for them).
BUILTIN_MODULES = ("methods.profuser", "methods.fusellm", "methods.inference_only", "methods.averaging", "methods.uld",
                   "methods.gold", "methods.fusechat3")

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Named classes of one kind: `register(name)` for built-ins (which sets `cls.name`), the entry point `group`
    for plugins (a built-in name wins), `builtin` modules imported on first use."""

    def __init__(self, kind: str, group: str, builtin: Sequence[str] = (), stage: str = "", hint: str = "") -> None:
        self.kind, self.group, self.builtin, self.stage, self.hint = kind, group, tuple(builtin), stage or kind, hint
        self._classes: dict[str, C] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        def wrap(cls: Any) -> Any:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice ({self._classes[name].__module__} and {cls.__module__})")
            cls.name = name
            self._classes[name] = cls
            return cls

        return wrap

    def available(self) -> dict[str, C]:
        if not self._loaded:
            for module in self.builtin:
                import_module(module)
            for ep in entry_points(group=self.group):
                if ep.name not in self._classes:  # loading runs the plugin's own @register_... (or not)
                    loaded = ep.load()
                    if ep.name not in self._classes:
                        self.register(ep.name)(loaded)
            self._loaded = True
        return dict(sorted(self._classes.items()))

    def get(self, name: str) -> C:
        found = self.available()
        if name not in found:
            hint = f" {self.hint}" if self.hint else ""
            raise HarnessError(f"unknown {self.kind} '{name}'; choose one of {', '.join(found)}{hint}", self.stage)
        return found[name]


METHODS: Registry[type[FusionMethod]] = Registry("method", ENTRY_POINT_GROUP, BUILTIN_MODULES, hint="(see `harness methods`)")


def register_method(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: `@register_method("profuser")` makes the method available by that name."""
    return METHODS.register(name)


def available_methods() -> dict[str, type[FusionMethod]]:
    return METHODS.available()


def get_method(name: str) -> type[FusionMethod]:
    return METHODS.get(name)


@dataclass(frozen=True)
class MethodInfo:
    """A registered method as `harness methods --verbose` shows it: its own parameters (`method.<name>` in a config)
    beside the fields every method shares."""

    name: str
    description: str
    needs: list[str]
    module: str
    parameters: list[Parameter]


def describe_methods() -> list[MethodInfo]:
    """Every registered method (built-in and plugins) with its own parameters, defaults and descriptions."""
    return [
        MethodInfo(name, cls.description, sorted(s.value for s in cls.needs), cls.__module__, cls.Params.describe())
        for name, cls in available_methods().items()
    ]
