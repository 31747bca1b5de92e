"""Bad input is reported whole: every problem found, then one error that lists them all.

``omnirad-client --check`` (the site file, its keys and the checks they allow), the checks of a
site's data before it trains and ``omnirad-predict`` each find many problems in one pass. A user
fixes them in one go only if one run of the command names them all, each with its file, key or
row, so each gathers them here instead of raising at the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from omnirad.errors import ConfigError


class Problems:
    """The problems found so far, in the order found. A problem may be ``about`` a key, so that a
    check that reads that key can be skipped (the key's problem is then the report)."""

    def __init__(self) -> None:
        self._found: list[tuple[str, str]] = []

    def add(self, problem: str, about: str = "") -> None:
        self._found.append((about, problem))

    def extend(self, problems: Iterable[str], about: str = "") -> None:
        for problem in problems:
            self.add(problem, about)

    def need(self, ok: bool, problem: str, about: str = "") -> bool:
        """Add ``problem`` unless ``ok``; returns ``ok``."""
        if not ok:
            self.add(problem, about)
        return ok

    def catch(self, check: Callable[[], object]) -> None:
        """Run ``check``, which raises ``ConfigError`` at its first problem (a registry's name check,
        say): that problem is added, and the next check still runs."""
        try:
            check()
        except ConfigError as err:
            self.add(str(err))

    def about(self) -> set[str]:
        """The keys that have a problem."""
        return {about for about, _ in self._found if about}

    def __iter__(self) -> Iterator[str]:
        return (problem for _, problem in self._found)

    def __len__(self) -> int:
        return len(self._found)

    def raise_if_any(self, error: Callable[[str], Exception] = ConfigError,
                     report: Callable[[list[str]], str] = "\n".join) -> None:
        """Raise one ``error`` whose message is ``report`` of every problem, when there is one."""
        if self._found:
            raise error(report(list(self)))
