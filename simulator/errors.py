"""The one error a user sees for bad input: it names the file, the field path and the bad value."""

from __future__ import annotations

import reprlib

SHOWN = 100  # characters of a value an error message shows at most

# bounded in work as well as in length: a value that stands for billions (aliases) or nests
# deeply is shown by its first few items at its first few levels
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = SHOWN, SHOWN, 40


def shown(value: object) -> str:
    """``repr(value)`` for an error message: one line, at most about ``SHOWN`` characters."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer past Python's digits limit for str()
        text = f"<an integer of {value.bit_length() * 0.30103:,.0f} digits>"  # type: ignore[union-attr]
    if len(text) > SHOWN:
        text = text[:SHOWN - 5] + "…" + text[-4:]
    return text


def printable(text: str) -> str:
    """``text`` as it is when every character prints, else with the others escaped (a key
    ``"\\n"`` in a field path must not break the one-line message)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def one_line(text: str) -> str:
    """A message on one line (YAML's and the OS's messages may have several)."""
    return " ".join(text.split())


class UserError(Exception):
    """Bad input from the user, not a bug: the command line prints one line and exits 2. The
    executor's and the commands' own input errors derive from it too."""


class UsageError(UserError):
    """A bad option or output path on the command line."""


class ScenarioError(UserError):
    """Bad scenario input.

    ``path`` is the dotted field path inside the file (``cluster.device.memory_GiB``,
    ``strategies[2].stages``); ``value`` is the offending value as the user wrote it; ``line`` is
    its line in the YAML file when known.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str = "",
                 value: object = None, has_value: bool = False, line: int | None = None):
        self.message = message
        self.file = file
        self.path = path
        self.value = value
        self.has_value = has_value
        self.line = line
        super().__init__(str(self))

    def _copy(self, **kw: object) -> ScenarioError:
        d = dict(file=self.file, path=self.path, value=self.value, has_value=self.has_value,
                 line=self.line)
        d.update(kw)
        return ScenarioError(self.message, **d)  # type: ignore[arg-type]

    def with_file(self, file: str) -> ScenarioError:
        return self._copy(file=file)

    def at_line(self, line: int | None) -> ScenarioError:
        """Attach a line unless a more precise one (deeper in the file) is already known."""
        return self if self.line is not None or line is None else self._copy(line=line)

    def __str__(self) -> str:
        where = printable(self.file or "<scenario>")
        if self.line is not None:
            where += f":{self.line}"
        if self.path:  # a key may hold a newline or a control character: shown escaped
            where += f": {printable(self.path)}"
        text = f"{where}: {one_line(self.message)}"
        if self.has_value:
            text += f" (got {shown(self.value)})"
        return text


class PlanError(UserError):
    """A strategy cannot build a plan for this model and cluster (a user-facing reason)."""


class LimitError(PlanError):
    """A plan or a run past one of ``simulator/limits.py``'s limits (``--no-limits`` lifts)."""
