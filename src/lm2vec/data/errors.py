"""One error policy for every data loader: report malformed records, never drop them silently.

Real corpora contain the odd broken line. Failing a long training run on line 812,004 is
unhelpful, and so is quietly losing data. Every loader therefore routes each malformed record
through :class:`Problems`, which either raises at the first one (``on_error="raise"``) or
collects them and emits exactly one :class:`DataWarning` with the count and the first few
``file:line`` locations (``on_error="skip"``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

OnError = Literal["skip", "raise"]
ON_ERROR_CHOICES: tuple[str, ...] = ("skip", "raise")
SHOWN_LOCATIONS = 5  # how many locations the skip warning quotes


class DataError(ValueError):
    """A data source cannot be read, or holds a malformed record under ``on_error="raise"``."""


class DataWarning(UserWarning):
    """Malformed records were skipped; the message gives their count and first locations."""


@dataclass
class Problems:
    """Collects malformed records from one source under one ``on_error`` policy.

    ``report`` raises ``DataError("where: reason")`` under ``"raise"``; under ``"skip"`` it records
    the problem, and ``finish`` turns all of them into a single warning.
    """

    on_error: OnError = "skip"
    found: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")

    def report(self, where: str, reason: str) -> None:
        """Record (or raise for) one malformed record found at ``where`` (``file:line``)."""
        if self.on_error == "raise":
            raise DataError(f"{where}: {reason}")
        self.found.append((where, reason))

    def finish(self, source: str) -> None:
        """Emit one warning summarising every skipped record of ``source``, if there were any."""
        if not self.found:
            return
        shown = "; ".join(f"{where}: {reason}" for where, reason in self.found[:SHOWN_LOCATIONS])
        more = f" (and {len(self.found) - SHOWN_LOCATIONS} more)" if len(self.found) > SHOWN_LOCATIONS else ""
        message = f"{source}: skipped {len(self.found)} malformed record(s): {shown}{more}"
        warnings.warn(message, DataWarning, stacklevel=3)
