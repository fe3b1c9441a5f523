"""The hand-written part of a benchmark's doc: a rerun writes its tables again and keeps these notes."""

from __future__ import annotations

from pathlib import Path


def hand_written(doc: Path, heading: str, default: str = "") -> str:
    """The text of an earlier `doc` from `heading` on (the notes written by hand), or `default`."""
    text = doc.read_text() if doc.exists() else ""
    return text[text.index(heading):] if heading in text else default
