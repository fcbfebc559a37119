"""User-facing compiler errors: CompilationError with file:line:col, source line and caret."""
from __future__ import annotations


class CompilationError(Exception):
    """An error in user kernel code, reported at its source location."""

    def __init__(self, message: str, filename: str = "<unknown>", line: int = 0, col: int = 0,
                 source_line: str | None = None):
        self.message = message
        self.filename = filename
        self.line = line
        self.col = col          # 0-based column
        self.source_line = source_line
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"{self.filename}:{self.line}:{self.col + 1}: error: {self.message}"
        if self.source_line is None:
            return head
        src = self.source_line.rstrip("\n")
        stripped = src.lstrip()
        caret_col = max(0, self.col - (len(src) - len(stripped)))
        return f"{head}\n    {stripped}\n    {' ' * caret_col}^"


class LaunchError(ValueError):
    """Bad arguments passed to a compiled kernel (wrong dtype, shape, contiguity...)."""


class UsageError(Exception):
    """A command-line problem the user can fix (bad option, unwritable path, port in use...).

    Raised by any `lutc` subcommand (lutc.cli, lutc.tuning.cli, lutc.remote.cli, runtime.cli);
    lutc.cli.main prints it as one line, `lutc <command>: error: <message>`, and exits 2."""
