"""Chat formatting for SFT: a conversation becomes token ids plus an assistant-only loss mask.

The model's own chat template renders the conversation (so training sees exactly the text
inference will). The mask marks the tokens the model must learn to produce: each assistant
turn's content and the template's end-of-turn marker, never the system, user or role-header
text. It works with stock templates that have no ``{% generation %}`` markers, for which
``apply_chat_template(return_assistant_tokens_mask=True)`` (and so TRL's ``assistant_only_loss``)
returns an all-zero mask.

How an assistant turn is found (turn ``i``, character offsets into the full rendering):

1. Prefix rule. ``prompt = render(messages[:i], add_generation_prompt=True)`` is what the model
   sees before it answers; ``turn = render(messages[:i+1])``. When the full rendering starts
   with ``turn`` and ``turn`` starts with ``prompt``, the assistant span is
   ``[len(prompt), len(turn))`` minus trailing whitespace. For ChatML that is
   ``content + "<|im_end|>"``; the ``"\\n"`` after ``<|im_end|>`` is left unsupervised (it is
   never generated: decoding stops at the end-of-turn token). A template that has no generation
   prompt (Llama-2 style) leaves any role header in the span, which is right: at inference the
   model has to emit it.
2. Fallback, for templates that rewrite earlier turns (the prefix rule fails): the turn's content
   (verbatim, else stripped of surrounding whitespace) is searched in the full rendering after
   the previous assistant span and after the contents of the turns in between. The span is
   extended over the template's end-of-turn text when that text, found once by rendering a probe
   conversation, follows the content exactly; otherwise the span is the content alone.
3. Otherwise :class:`ChatTemplateError` (reason ``template_mismatch``): for example a
   reasoning-stripping template that drops an earlier turn's ``<think>`` block, so the text the
   turn was written as never appears in the rendering the model trains on.

The full text is tokenized once (``add_special_tokens=False``: the template already writes BOS
and friends). Token rule: a token with character range ``[s, e)`` is supervised iff it overlaps
an assistant span ``[a, b)``, i.e. ``s < b and e > a``. A token that straddles a span boundary
(BPE merged template text with assistant text, e.g. ``"><"`` in ``"</s><s>"``) is therefore
supervised: every character of every span is produced by some supervised token, at the cost of
at most one token's worth of adjacent template text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ftscale.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Message = dict[str, Any]

# Lint thresholds. Heuristics, not literature values: real SFT sets supervise roughly 15-70%
# of tokens; a share outside [2%, 98%] almost always means the mask is wrong (template
# mismatch, assistant text in the wrong role) or the data is degenerate (one-word answers to
# long prompts, prompt-less records).
MIN_SUPERVISED_SHARE = 0.02
MAX_SUPERVISED_SHARE = 0.98
# An encoded conversation always has an assistant turn, so a zero share means its span was
# empty or whitespace; more than a few such records points at the template, not the data.
MAX_ZERO_SHARE_FRACTION = 0.05

# Probe contents used to learn the template's end-of-turn text; chosen so no template
# rewrites them and they occur nowhere else in the probe's rendering.
_PROBE_REPLY = ("ftscale-probe-reply-a", "ftscale-probe-reply-b")
_PROBE_QUESTION = "ftscale-probe-question"
_UNSET = object()


class ChatRecordError(DataError):
    """A conversation that cannot be encoded; ``reason`` is its quarantine reason."""

    reason = "chat_error"


class ChatTemplateError(ChatRecordError):
    """The chat template's rendering cannot be mapped back to the conversation's assistant turns."""

    reason = "template_mismatch"


class NoAssistantTurnError(ChatRecordError):
    """The conversation has no assistant message, so nothing in it would be learned."""

    reason = "no_assistant_turn"


@dataclass(frozen=True, eq=False)
class EncodedChat:
    """One rendered, tokenized conversation.

    ``input_ids`` (int32) and ``loss_mask`` (uint8, 1 = the model learns to produce this token)
    have the same length; ``text`` is the full rendering the ids were tokenized from.
    """

    input_ids: np.ndarray
    loss_mask: np.ndarray
    text: str


class ChatEncoder:
    """Renders conversations with a chat template and masks everything but assistant turns.

    ``tokenizer`` is a Hugging Face fast tokenizer (character offsets are needed).
    ``chat_template`` overrides the tokenizer's template (a Jinja string); ``system_prompt`` is
    inserted as the first message of conversations that have no system message.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: str | None = None,
        system_prompt: str | None = None,
    ) -> None:
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
        self._tokenizer = tokenizer
        self._chat_template = chat_template or None
        self._system_prompt = system_prompt
        self._end_of_turn: Any = _UNSET
        self.template_name = (
            f"tokenizer.chat_template override for {name}" if chat_template else f"stock template of {name}"
        )

    def encode(self, messages: list[Message]) -> EncodedChat:
        """Encode one conversation; raises :class:`ChatRecordError` when it cannot be encoded."""
        text, spans = self._render_spans(messages)
        enc = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return _build(enc["input_ids"], enc["offset_mapping"], text, spans)

    def encode_batch(
        self, conversations: Sequence[list[Message]]
    ) -> tuple[list[EncodedChat | None], list[tuple[int, str, str]]]:
        """Encode many conversations with one tokenizer call.

        Returns one entry per conversation (None where it failed) and the failures as
        ``(index, reason, detail)`` with reason ``template_mismatch`` or ``no_assistant_turn``.
        """
        results: list[EncodedChat | None] = [None] * len(conversations)
        failures: list[tuple[int, str, str]] = []
        rendered: list[tuple[int, str, list[tuple[int, int]]]] = []
        for index, messages in enumerate(conversations):
            try:
                text, spans = self._render_spans(messages)
            except ChatRecordError as exc:
                failures.append((index, exc.reason, str(exc)))
                continue
            rendered.append((index, text, spans))
        if rendered:
            enc = self._tokenizer(
                [text for _, text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True
            )
            for k, (index, text, spans) in enumerate(rendered):
                results[index] = _build(enc["input_ids"][k], enc["offset_mapping"][k], text, spans)
        return results, failures

    def _with_system(self, messages: list[Message]) -> list[Message]:
        if self._system_prompt is None or any(m.get("role") == "system" for m in messages):
            return list(messages)
        return [{"role": "system", "content": self._system_prompt}, *messages]

    def _render(self, messages: list[Message], generation_prompt: bool) -> str:
        rendered = self._tokenizer.apply_chat_template(
            messages,
            chat_template=self._chat_template,
            tokenize=False,
            add_generation_prompt=generation_prompt,
        )
        return cast(str, rendered)  # tokenize=False renders one conversation to one str

    def _try_render(self, messages: list[Message], generation_prompt: bool) -> str | None:
        # A template may reject a partial conversation in any way it likes (raise_exception,
        # a TypeError on a missing field, HF refusing an empty list); all that matters here is
        # that the prefix rule cannot be used for this turn.
        try:
            return self._render(messages, generation_prompt)
        except Exception:
            return None

    def _render_spans(self, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
        """The full rendering and the character span of every assistant turn in it."""
        messages = self._with_system(messages)
        assistant_turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if not assistant_turns:
            raise NoAssistantTurnError("conversation has no assistant message; nothing to learn")
        try:
            full = self._render(messages, False)
        except Exception as exc:
            raise ChatTemplateError(f"{self.template_name} failed to render the conversation: {exc}") from exc
        spans: list[tuple[int, int]] = []
        previous_turn, previous_end = -1, 0
        for i in assistant_turns:
            span = self._prefix_span(messages, i, full, previous_end)
            if span is None:
                span = self._located_span(messages, i, full, previous_turn, previous_end)
            spans.append(span)
            previous_turn, previous_end = i, span[1]
        return full, spans

    def _prefix_span(self, messages: list[Message], i: int, full: str, previous_end: int) -> tuple[int, int] | None:
        if i == 0:  # no prompt to render: HF refuses an empty conversation
            return None
        prompt = self._try_render(messages[:i], True)
        turn = self._try_render(messages[: i + 1], False)
        if prompt is None or turn is None or len(prompt) < previous_end:
            return None
        if not (full.startswith(turn) and turn.startswith(prompt)):
            return None
        start = len(prompt)
        return start, start + len(turn[start:].rstrip())

    def _located_span(
        self, messages: list[Message], i: int, full: str, previous_turn: int, previous_end: int
    ) -> tuple[int, int]:
        cursor = previous_end
        # Step over the turns since the previous assistant turn, so a reply that repeats the
        # user's words is not matched inside the user's turn.
        for message in messages[previous_turn + 1 : i]:
            hit = _find_content(full, message.get("content"), cursor)
            if hit is not None:
                cursor = hit[1]
        hit = _find_content(full, messages[i].get("content"), cursor)
        if hit is None:
            raise ChatTemplateError(
                f"assistant turn at message {i}: {self.template_name} rewrites earlier turns "
                f"(rendering messages[:{i + 1}] is not a prefix of the full rendering) and the "
                "turn's content does not appear in the full rendering after the previous turn"
            )
        start, end = hit
        end_of_turn = self._end_of_turn_text()
        if end_of_turn and full.startswith(end_of_turn, end):
            end += len(end_of_turn)
        return start, end

    def _end_of_turn_text(self) -> str | None:
        """The text a template writes right after an assistant turn's content, without trailing
        whitespace (``"<|im_end|>"`` for ChatML); None when a probe cannot establish it."""
        if self._end_of_turn is _UNSET:
            self._end_of_turn = self._probe_end_of_turn()
        return self._end_of_turn

    def _probe_end_of_turn(self) -> str | None:
        reply_a, reply_b = _PROBE_REPLY
        one_turn = self._with_system(
            [{"role": "user", "content": _PROBE_QUESTION}, {"role": "assistant", "content": reply_a}]
        )
        two_turns = [
            *one_turn,
            {"role": "user", "content": _PROBE_QUESTION},
            {"role": "assistant", "content": reply_b},
        ]
        single = self._try_render(one_turn, False)
        double = self._try_render(two_turns, False)
        if single is None or double is None or reply_a not in single or reply_a not in double:
            return None
        tail = single[single.index(reply_a) + len(reply_a) :].rstrip()
        # The text after the last turn could be an end-of-conversation marker; keep it only if
        # the same text also closes a turn that is followed by another one.
        if not tail or not double.startswith(tail, double.index(reply_a) + len(reply_a)):
            return None
        return tail


def _find_content(full: str, content: Any, cursor: int) -> tuple[int, int] | None:
    """Where ``content`` (verbatim, else whitespace-stripped, as templates often ``| trim``)
    first occurs in ``full`` at or after ``cursor``; None for empty or non-string content."""
    if not isinstance(content, str) or not content.strip():
        return None
    for needle in (content, content.strip()):
        at = full.find(needle, cursor)
        if at >= 0:
            return at, at + len(needle)
    return None


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


def supervised_share(encoded: EncodedChat) -> float:
    """Fraction of the conversation's tokens that carry loss (0.0 for an empty one)."""
    n_tokens = len(encoded.loss_mask)
    return float(encoded.loss_mask.sum()) / n_tokens if n_tokens else 0.0


def lint_masks(
    source: str, template_name: str, shares: np.ndarray, token_counts: np.ndarray | None = None
) -> list[str]:
    """Check a source's loss masks; returns warnings, raises DataError when nothing is supervised.

    ``shares`` holds :func:`supervised_share` per encoded conversation. The source's share is
    their mean, or the token-weighted mean when ``token_counts`` (tokens per conversation) is
    given. A source with no encoded conversations yields no warnings (its counts say why).
    """
    shares = np.asarray(shares, dtype=np.float64)
    if shares.size == 0:
        return []
    if token_counts is None:
        total = float(shares.mean())
    else:
        counts = np.asarray(token_counts, dtype=np.float64)
        total = float((shares * counts).sum() / counts.sum()) if counts.sum() else 0.0
    if total == 0.0:
        raise DataError(
            f"source {source!r}: no token is supervised under {template_name}; check that the "
            "chat template renders assistant turns and that the messages field holds turns with "
            "role 'assistant'"
        )
    warnings = []
    if total < MIN_SUPERVISED_SHARE:
        warnings.append(
            f"source {source!r}: only {total:.1%} of tokens are supervised under {template_name} "
            f"(expected at least {MIN_SUPERVISED_SHARE:.0%}); check the template and the roles"
        )
    if total > MAX_SUPERVISED_SHARE:
        warnings.append(
            f"source {source!r}: {total:.1%} of tokens are supervised under {template_name} "
            f"(expected at most {MAX_SUPERVISED_SHARE:.0%}); are prompts missing or in the assistant role?"
        )
    zero_fraction = float((shares == 0.0).mean())
    if zero_fraction > MAX_ZERO_SHARE_FRACTION:
        warnings.append(
            f"source {source!r}: {zero_fraction:.1%} of conversations have no supervised token under "
            f"{template_name} (expected at most {MAX_ZERO_SHARE_FRACTION:.0%}); empty assistant replies "
            "or a template that drops them"
        )
    return warnings


__all__ = [
    "ChatEncoder",
    "ChatRecordError",
    "ChatTemplateError",
    "EncodedChat",
    "NoAssistantTurnError",
    "lint_masks",
    "supervised_share",
]
