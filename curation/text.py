"""Text normalization shared by lemmas and captions, so that matching is whole-word and
insensitive to case and punctuation."""

from __future__ import annotations

import re

_NOT_WORD = re.compile(r"[\W_]+")  # \W is Unicode-aware; "_" is a word character in regex


def normalize(text: str) -> str:
    """'Jack-O'-Lantern!' -> 'jack o lantern': lowercase; runs of non-letters/digits -> ' '."""
    return _NOT_WORD.sub(" ", text.lower()).strip()
