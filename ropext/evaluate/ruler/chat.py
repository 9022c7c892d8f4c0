"""The chat template around a RULER prompt, as RULER's ``prepare.py`` wraps chat models: the task's prompt is the
user's turn, the template's generation prompt follows, and the answer prefix comes after that, so the model
answers in its own assistant turn starting from RULER's prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ropext.errors import RopextError

_MARK = "ROPEXT-RULER-USER-TURN-7F3A"
"""Stands for the user's message while the template is rendered; plain text no template changes (nor trims)."""


@dataclass(frozen=True)
class ChatWrap:
    opening: str
    """The template's text before the user's message (system turn, role header, BOS where it writes one)."""
    closing: str
    """The template's text after the user's message: end of turn and generation prompt."""


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_wrap(tokenizer: Any) -> ChatWrap:
    """The tokenizer's chat template around one user message, with the generation prompt added, as text.

    Rendering once with a marker and splitting there keeps the prompt one text, tokenised whole like every
    other RULER prompt here; the template's special tokens are written in it as text and tokenised as special
    tokens (as ``apply_chat_template`` does, no other special tokens are added)."""
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": _MARK}], tokenize=False, add_generation_prompt=True
        )
    except Exception as error:  # a template may raise anything (jinja2 errors, raise_exception)
        raise RopextError(
            f"the tokenizer's chat template does not render a user turn ({error}); run with --no-chat-template"
        ) from None
    if not isinstance(text, str) or text.count(_MARK) != 1:
        raise RopextError(
            "the tokenizer's chat template does not hold the user's message once; run with --no-chat-template"
        )
    opening, closing = text.split(_MARK)
    return ChatWrap(opening, closing)
