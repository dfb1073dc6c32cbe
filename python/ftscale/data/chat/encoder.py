"""The Python engine for SFT conversations: Hugging Face's own ``apply_chat_template`` (Jinja2)
and the tokenizer's Python binding. It is the reference the Rust engine (``chat.fast``) is held to
byte for byte, and the fallback for templates minijinja cannot render.

A conversation becomes one or more samples (``chat.spans``: the prefix rule, expansion of turns the
template rewrites, locating), each tokenized once (``add_special_tokens=False``: the template
already writes BOS and friends). Token rule: a token with character range ``[s, e)`` is supervised
iff it overlaps an assistant span ``[a, b)``, i.e. ``s < b and e > a``. A token that straddles a
span boundary (BPE merged template text with assistant text, e.g. ``"><"`` in ``"</s><s>"``) is
therefore supervised: every character of every span is produced by some supervised token, at the
cost of at most one token's worth of adjacent template text. This works with stock templates that
have no ``{% generation %}`` markers, for which ``apply_chat_template(return_assistant_tokens_mask=True)``
(and so TRL's ``assistant_only_loss``) returns an all-zero mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ftscale.data.chat.spans import (
    POLICIES,
    ChatRecordError,
    ChatTemplateError,
    Markers,
    NoAssistantTurnError,
    plan,
    probe_markers,
)
from ftscale.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]
Conversation = tuple[list[Message], Any]  # (template messages, tools or None)


@dataclass(frozen=True, eq=False)
class EncodedChat:
    """One rendered, tokenized sample of a conversation.

    ``input_ids`` (int32) and ``loss_mask`` (uint8, 1 = the model learns to produce this token)
    have the same length; ``text`` is the rendering the ids were tokenized from.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    text: str


@dataclass
class EncodedBatch:
    """The samples of a batch of conversations, in conversation order.

    ``owners[k]`` is the index (in the batch) of the conversation sample ``k`` came from;
    ``failures`` are ``(index, reason, detail)`` of the conversations that yield no sample.
    """

    ids: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)
    failures: list[tuple[int, str, str]] = field(default_factory=list)
    expanded_turns: int = 0
    located_turns: int = 0
    python_rendered: int = 0  # conversations the Rust engine handed to the Python one
    texts: list[str] = field(default_factory=list)  # each sample's rendering (Python engine only)


def special_tokens_of(tokenizer: Any) -> list[tuple[str, str]]:
    """The template variables ``apply_chat_template`` adds: ``bos_token``, ``eos_token``, ..."""
    return [(k, str(v)) for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)]


class ChatEncoder:
    """Renders conversations with a chat template and masks everything but assistant turns.

    ``tokenizer`` is a Hugging Face fast tokenizer (character offsets are needed).
    ``chat_template`` overrides the tokenizer's template (a Jinja string); ``policy`` is what
    happens to turns the template rewrites once later turns follow (``chat.spans``).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, chat_template: str | None = None,
                 policy: str = "expand") -> None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                f"tokenizer {name!r} is not a fast tokenizer; chat loss masks need character "
                "offsets, so point tokenizer.path at a directory with tokenizer.json"
            )
        if not (chat_template or getattr(tokenizer, "chat_template", None)):
            raise ConfigError(
                f"tokenizer {name!r} has no chat template; set tokenizer.chat_template in the "
                "prep config to the model's Jinja chat template"
            )
        if policy not in POLICIES:
            raise ConfigError(f"rewritten_turns must be one of {', '.join(POLICIES)}, got {policy!r}")
        self._tokenizer = tokenizer
        self._chat_template = chat_template or None
        self._policy = policy
        self._markers: Markers | None = None
        self.template_name = (
            f"tokenizer.chat_template override for {name}" if chat_template else f"stock template of {name}"
        )

    @property
    def template(self) -> str:
        return cast(str, self._chat_template or self._tokenizer.chat_template)

    def render(self, messages: list[Message], tools: Any = None, add_generation_prompt: bool = False) -> str:
        """``apply_chat_template(tokenize=False)`` of ``messages``; raises what the template raises."""
        rendered = self._tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=self._chat_template, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        return cast(str, rendered)  # tokenize=False renders one conversation to one str

    def encode(self, messages: list[Message], tools: Any = None) -> list[EncodedChat]:
        """The samples of one conversation; raises :class:`ChatRecordError` when it has none."""
        batch = self.encode_batch([(messages, tools)])
        if batch.failures:
            _, reason, detail = batch.failures[0]
            raise (NoAssistantTurnError if reason == "no_assistant_turn" else ChatTemplateError)(detail)
        return [EncodedChat(input_ids=i, loss_mask=m, text=t) for i, m, t in zip(batch.ids, batch.masks, batch.texts)]

    def _plan(self, messages: list[Message], tools: Any) -> Any:
        def render(n: int, generation_prompt: bool) -> str:
            return self.render(messages[:n], tools, generation_prompt)

        return plan(messages, render, self._policy, self._template_markers())

    def encode_batch(self, conversations: Sequence[Conversation]) -> EncodedBatch:
        """Encode many conversations with one tokenizer call (failures are reported, not raised)."""
        out = EncodedBatch()
        texts: list[str] = []
        spans: list[tuple[tuple[int, int], ...]] = []
        for index, (messages, tools) in enumerate(conversations):
            try:
                planned = self._plan(messages, tools)
            except ChatRecordError as exc:
                out.failures.append((index, exc.reason, str(exc)))
                continue
            out.expanded_turns += planned.expanded_turns
            out.located_turns += planned.located_turns
            for text, sample_spans in planned.samples:
                texts.append(text)
                spans.append(sample_spans)
                out.owners.append(index)
        out.texts = texts
        if texts:
            enc = self._tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
            for k, text in enumerate(texts):
                sample = _build(enc["input_ids"][k], enc["offset_mapping"][k], text, list(spans[k]))
                out.ids.append(sample.input_ids)
                out.masks.append(sample.loss_mask)
        return out

    def _template_markers(self) -> Markers:
        if self._markers is None:
            eos = self._tokenizer.special_tokens_map.get("eos_token")
            self._markers = probe_markers(lambda messages: self.render(messages), eos if isinstance(eos, str) else None)
        return self._markers


def _build(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], text: str, spans: list[tuple[int, int]]
) -> EncodedChat:
    ids = np.asarray(input_ids, dtype=np.int32)
    token_ranges = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    # Empty spans are dropped: under the overlap rule a zero-width span would select the
    # token around it, which holds no assistant text.
    bounds = np.asarray([s for s in spans if s[1] > s[0]], dtype=np.int64).reshape(-1, 2)
    overlaps = (token_ranges[:, None, 0] < bounds[None, :, 1]) & (token_ranges[:, None, 1] > bounds[None, :, 0])
    mask = np.asarray(overlaps.any(axis=1), dtype=np.uint8)
    return EncodedChat(input_ids=ids, loss_mask=mask, text=text)
