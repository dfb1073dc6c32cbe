"""Chat formatting for SFT: a conversation becomes token ids plus an assistant-only loss mask.

The model's own chat template renders the conversation (so training sees exactly the text
inference will). The mask marks the tokens the model must learn to produce: each assistant
turn's content and the template's end-of-turn marker, never the system, user, tool or role-header
text. A template that rewrites history (drops earlier reasoning, folds the system prompt) gets
one sample per rewritten turn, so every assistant turn is trained in the context it has at
inference (``spans``).

- ``messages``: stored records → the messages a template renders (shared by both engines);
- ``spans``: which samples a conversation becomes and which characters carry loss;
- ``encoder``: the Python engine (``transformers`` + Jinja2), the reference;
- ``fast``: the Rust engine (minijinja + ``tokenizers``, all cores) and the choice between them;
- ``lint``: checks of a source's supervised share.
"""

from ftscale.data.chat.encoder import ChatEncoder, EncodedBatch, EncodedChat, special_tokens_of
from ftscale.data.chat.fast import ENGINES, EngineChoice, PlainMessages, RustChatEncoder, choose_engine, plain_messages
from ftscale.data.chat.lint import lint_masks, supervised_share
from ftscale.data.chat.messages import template_messages, template_tools
from ftscale.data.chat.spans import POLICIES, ChatRecordError, ChatTemplateError, NoAssistantTurnError

__all__ = [
    "ENGINES",
    "POLICIES",
    "ChatEncoder",
    "ChatRecordError",
    "ChatTemplateError",
    "EncodedBatch",
    "EncodedChat",
    "EngineChoice",
    "NoAssistantTurnError",
    "PlainMessages",
    "RustChatEncoder",
    "choose_engine",
    "lint_masks",
    "plain_messages",
    "special_tokens_of",
    "supervised_share",
    "template_messages",
    "template_tools",
]
