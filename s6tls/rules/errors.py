"""Errors raised by the access-rules model, so callers can turn them into one log line."""

from __future__ import annotations


class RulesError(Exception):
    """A rules directory, a rules file or a rule value cannot be used."""


class RuleTooBigError(RulesError):
    """A rule's env block or exec text exceeds what the cdb format can hold (4096 bytes)."""

    def __init__(self, part: str, size: int, message: str | None = None) -> None:
        self.part = part
        self.size = size
        super().__init__(message or f"{part} is {size} bytes, more than 4096")


class NotARuleError(RulesError):
    """A cdb value whose type byte is neither ``A`` nor ``D``: upstream treats its key as absent."""
