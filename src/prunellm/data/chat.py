"""Chat records to text through the tokenizer's own chat template.

Instruct models are best calibrated on text shaped like their inputs, special tokens included,
as llm-compressor and AutoRound do: each conversation (a list of {"role", "content"}
messages) is rendered by `tokenizer.apply_chat_template(messages, tokenize=False)`. The
rendered text keeps the template's special-token strings (<|im_start|>, <bos>, ...), which the
tokenizer then reads back as their special ids.
"""

from __future__ import annotations

from typing import Any

from prunellm.errors import PrunellmError


def is_conversation(value: Any) -> bool:
    """A list of messages, each a mapping with a "role" and a "content"."""
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value))


def render_conversations(conversations: list[Any], tokenizer: Any, label: str) -> list[str]:
    """Each conversation as the text the model's chat template makes of it."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise PrunellmError(f"{label} holds chat messages but the tokenizer has no chat template: give a text "
                            "column instead, or a tokenizer with one (tokenizer.chat_template)")
    texts = []
    for row, messages in enumerate(conversations):
        if not is_conversation(messages):
            raise PrunellmError(f"{label}: row {row} is not a list of {{role, content}} messages")
        try:
            text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        except Exception as err:  # noqa: BLE001 - a template that rejects the messages (e.g. roles) is bad input
            first = (str(err).splitlines() or [""])[0][:200]
            raise PrunellmError(f"{label}: row {row}: the chat template refused it ({first})") from None
        texts.append(text)
    return texts
