"""What a person must read about a run: one :class:`Note` each, ``error`` when a result is likely wrong until fixed."""

from __future__ import annotations

from dataclasses import dataclass

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Note:
    """Something about a run a person must read; ``error`` means a result is likely wrong until it is fixed."""

    severity: str  # one of SEVERITIES
    message: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}; choose from {SEVERITIES}")

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"

