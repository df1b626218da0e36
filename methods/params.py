"""A method's own parameters: the pydantic model each fusion method declares as its `Params` (methods/base.py).

Kept apart from methods/base.py so that reading a method's parameters (config validation, `harness methods
--verbose`, the CLI's choices) needs pydantic only, not torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict


class MethodParams(BaseModel):
    """A method's own parameters: subclass it with documented fields (`Field(default, description=...)`) and set it
    as the method's `Params`. In a config they sit flat under `method.` beside the fields every method shares
    (MethodSpec); unknown fields and non-finite floats are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @classmethod
    def describe(cls, prefix: str = "") -> list[Parameter]:
        """Every field as `Parameter`, a nested model's fields under their dotted path (`schedule.switch`)."""
        out: list[Parameter] = []
        for name, info in cls.model_fields.items():
            kind = info.annotation
            if isinstance(kind, type) and issubclass(kind, MethodParams):
                out.append(Parameter(prefix + name, kind.__name__, None, info.description or ""))
                out += kind.describe(f"{prefix}{name}.")
                continue
            out.append(Parameter(prefix + name, type_text(kind), info.get_default(call_default_factory=True), info.description or ""))
        return out


@dataclass(frozen=True)
class Parameter:
    """One parameter as `harness methods --verbose` lists it."""

    name: str
    type: str
    default: Any
    description: str


def type_text(annotation: Any) -> str:
    """`float`, `bool`, `Literal['uniform', 'avgce']`, `tuple[float, float]`: an annotation as a user reads it."""
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
