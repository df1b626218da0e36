"""User-facing errors: one line naming the problem and the fix, exit code 2, no traceback.

Anything the user can fix (a config value, a path, a task name) raises `HarnessError`; the CLI prints
`harness: <where>: <message>` and exits 2. Bugs stay ordinary exceptions with their tracebacks.
"""

from __future__ import annotations


class HarnessError(Exception):
    """An error the user can act on; `where` names the part of the input at fault (e.g. 'config')."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.where = where

    def one_line(self) -> str:
        text = " ".join(str(self).split())
        return f"harness: {self.where}: {text}" if self.where else f"harness: {text}"
