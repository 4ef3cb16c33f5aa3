"""A user's mistakes: in a file, each reported as ``FILE:LINE: path.to.key: message``, or on
the command line, as one line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class ConfigIssue:
    """One mistake in a configuration file."""

    line: int
    path: str
    message: str
    source: str = field(default="<config>", compare=False)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        at = f"{self.source}:{self.line}" if self.line else self.source  # 0: the whole file
        return f"{at}: {where}{self.message}"


class ConfigError(Exception):
    """A configuration with one or more mistakes; ``str()`` gives one line per mistake."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = sorted(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class UsageError(Exception):
    """A mistake on the command line or in a file it names (not a config file): one line for
    the user, exit status 2."""
