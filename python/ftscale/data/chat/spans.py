"""Which samples a conversation becomes, and which characters of each carry loss.

The rule (the Rust core's ``chat::spans`` is the same rule, held to it byte for byte by the tests).
For assistant turn ``i`` (character offsets):

1. **Prefix rule.** ``prompt = render(messages[:i], add_generation_prompt=True)`` is what the
   model sees before it answers; ``turn = render(messages[:i+1])`` without the template's
   end-of-conversation marker (Phi-3 closes a conversation with EOS, learned by a probe). When
   the full rendering starts with ``turn`` and ``turn`` starts with ``prompt``, the assistant
   span is ``[len(prompt), len(turn))`` minus trailing whitespace. For ChatML that is
   ``content + "<|im_end|>"``; the ``"\\n"`` after ``<|im_end|>`` is left unsupervised (it is
   never generated: decoding stops at the end-of-turn token). A template that has no generation
   prompt (Llama-2 style) leaves any role header in the span, which is right: at inference the
   model has to emit it.
2. **Expansion** (policy ``expand``, the default). The full rendering does not start with
   ``turn``: the template rewrites history once later turns follow (Qwen3-style templates drop an
   earlier turn's ``<think>`` block; others fold or rename). Training that turn on the full
   rendering would train it on text it never generates at inference, so the turn becomes a sample
   of its own: ``turn`` itself (the conversation up to that turn, as the template renders it
   when the turn is the latest one), with the turn supervised by the prefix rule inside ``turn``
   (else located in it, rule 3). Policy ``locate`` skips this rule.
3. **Locating.** The turn's content (verbatim, else stripped of surrounding whitespace) is
   searched in the full rendering after the previous assistant span and after the contents of the
   turns in between; the span is extended over the template's end-of-turn text when that text,
   found once by rendering a probe conversation, follows the content exactly.
4. Otherwise the conversation is a template mismatch.

A conversation yields the full rendering (when any turn is supervised in it) followed by one
sample per expanded turn, in turn order; every assistant turn is supervised in exactly one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ftscale.errors import DataError

POLICIES = ("expand", "locate")
# Probe contents used to learn the template's end-of-turn text; chosen so no template
# rewrites them and they occur nowhere else in the probe's rendering.
PROBE_REPLY = ("ftscale-probe-reply-a", "ftscale-probe-reply-b")
PROBE_QUESTION = "ftscale-probe-question"

Render = Callable[[int, bool], str]  # (first n messages, add_generation_prompt) -> text; raises on failure
Span = tuple[int, int]


class ChatRecordError(DataError):
    """A conversation that cannot be encoded; ``reason`` is its quarantine reason."""

    reason = "chat_error"


class ChatTemplateError(ChatRecordError):
    """The chat template does not render the conversation, or its rendering cannot be mapped
    back to the conversation's assistant turns."""

    reason = "template_mismatch"


class NoAssistantTurnError(ChatRecordError):
    """The conversation has no assistant message, so nothing in it would be learned."""

    reason = "no_assistant_turn"


@dataclass(frozen=True)
class Plan:
    """The samples (text, spans) of one conversation and how many turns rules 2 and 3 placed."""

    samples: tuple[tuple[str, tuple[Span, ...]], ...]
    expanded_turns: int
    located_turns: int


@dataclass(frozen=True)
class Markers:
    """What a template writes after an assistant turn's content: ``end_of_turn`` after every
    turn (``"<|im_end|>"``), ``end_of_conversation`` only after the last (Phi-3's EOS)."""

    end_of_turn: str | None = None
    end_of_conversation: str | None = None

    def body(self, rendering: str) -> str:
        """``rendering`` without a trailing end-of-conversation marker."""
        eoc = self.end_of_conversation
        if eoc:
            stripped = rendering.rstrip()
            if stripped.endswith(eoc):
                return stripped[:-len(eoc)]
        return rendering


def plan(messages: Sequence[dict[str, Any]], render: Render, policy: str, markers: Markers) -> Plan:
    """Plan one conversation (see the module docstring). Raises :class:`ChatRecordError`."""
    assistant = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistant:
        raise NoAssistantTurnError("conversation has no assistant message; nothing to learn")
    try:
        full = render(len(messages), False)
    except Exception as exc:  # a template may fail in any way it likes
        raise ChatTemplateError(f"the chat template failed to render the conversation: {exc}") from exc
    contents = [m.get("content") for m in messages]
    full_spans: list[Span] = []
    expanded: list[tuple[str, tuple[Span, ...]]] = []
    located = 0
    previous_turn, previous_end = -1, 0
    end_of_turn = markers.end_of_turn
    for i in assistant:
        prompt = turn = body = None
        if i > 0:  # no prompt to render: HF refuses an empty conversation
            prompt, turn = _try(render, i, True), _try(render, i + 1, False)
            body = None if turn is None else markers.body(turn)
        if (prompt is not None and body is not None and len(prompt) >= previous_end
                and full.startswith(body) and body.startswith(prompt)):
            span = (len(prompt), len(prompt) + len(body[len(prompt):].rstrip()))
            full_spans.append(span)
            previous_turn, previous_end = i, span[1]
            continue
        if policy == "expand" and turn is not None and body is not None and not full.startswith(body):
            if prompt is not None and body.startswith(prompt):
                own: Span | None = (len(prompt), len(prompt) + len(body[len(prompt):].rstrip()))
            else:
                own = _locate(turn, contents, i, -1, 0, end_of_turn)
            if own is not None:
                expanded.append((turn, (own,)))
                continue
        span = _locate(full, contents, i, previous_turn, previous_end, end_of_turn)
        if span is None:
            raise ChatTemplateError(
                f"assistant turn at message {i}: the template rewrites earlier turns (rendering "
                f"messages[:{i + 1}] is not a prefix of the full rendering) and the turn's content does "
                "not appear in the full rendering after the previous turn")
        located += 1
        full_spans.append(span)
        previous_turn, previous_end = i, span[1]
    samples = ([(full, tuple(full_spans))] if full_spans else []) + expanded
    return Plan(samples=tuple(samples), expanded_turns=len(expanded), located_turns=located)


def _try(render: Render, n: int, generation_prompt: bool) -> str | None:
    # A template may reject a partial conversation in any way it likes (raise_exception, a
    # TypeError on a missing field); all that matters is that the prefix rule cannot be used.
    try:
        return render(n, generation_prompt)
    except Exception:
        return None


def _locate(text: str, contents: list[Any], i: int, previous_turn: int, cursor: int,
            end_of_turn: str | None) -> Span | None:
    # Step over the turns since the previous assistant turn, so a reply that repeats the
    # user's words is not matched inside the user's turn.
    for content in contents[previous_turn + 1:i]:
        hit = _find_content(text, content, cursor)
        if hit is not None:
            cursor = hit[1]
    hit = _find_content(text, contents[i], cursor)
    if hit is None:
        return None
    start, end = hit
    if end_of_turn and text.startswith(end_of_turn, end):
        end += len(end_of_turn)
    return start, end


def _find_content(text: str, content: Any, cursor: int) -> Span | None:
    """Where ``content`` (verbatim, else whitespace-stripped, as templates often ``| trim``)
    first occurs in ``text`` at or after ``cursor``; None for empty or non-string content."""
    if not isinstance(content, str) or not content.strip():
        return None
    for needle in (content, content.strip()):
        at = text.find(needle, cursor)
        if at >= 0:
            return at, at + len(needle)
    return None


def probe_markers(render_messages: Callable[[list[dict[str, Any]]], str], eos_token: str | None) -> Markers:
    """The template's markers, from rendering one and two probe exchanges.

    End of turn: the text after reply A in the one-exchange rendering, without trailing
    whitespace, when the same text also follows reply A in the two-exchange rendering. Failing
    that, when that text ends with the EOS token and the text before EOS does follow reply A in
    both, EOS is an end-of-conversation marker and the text before it the end of turn.
    """
    reply_a, reply_b = PROBE_REPLY
    one_turn = [{"role": "user", "content": PROBE_QUESTION}, {"role": "assistant", "content": reply_a}]
    two_turns = [*one_turn, {"role": "user", "content": PROBE_QUESTION}, {"role": "assistant", "content": reply_b}]
    try:
        single, double = render_messages(one_turn), render_messages(two_turns)
    except Exception:
        return Markers()
    if reply_a not in single or reply_a not in double:
        return Markers()
    tail = single[single.index(reply_a) + len(reply_a):].rstrip()
    after = double.index(reply_a) + len(reply_a)
    if tail and double.startswith(tail, after):
        return Markers(end_of_turn=tail)
    if eos_token and tail.endswith(eos_token):
        before = tail[:-len(eos_token)]
        if before.rstrip() and double.startswith(before, after):
            return Markers(end_of_turn=before.rstrip(), end_of_conversation=eos_token)
    return Markers()
