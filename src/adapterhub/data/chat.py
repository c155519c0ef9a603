"""Chat tokenisation: one conversation -> input ids and labels whose loss covers the assistant turns only.

A conversation is a list of ``{"role": ..., "content": ...}`` messages (OpenAI style; roles ``system``, ``user``,
``assistant``). The tokenizer's chat template renders it. For each assistant turn, the prompt before it (rendered
with ``add_generation_prompt=True``) must be a token prefix of the conversation through that turn; the turn's
response tokens are the ones after that prefix, up to and including the tokenizer's end-of-sequence token (the
end-of-turn token of chat models such as ``<|im_end|>``) when it occurs, so template glue after it (a newline)
carries no loss. A template that breaks the prefix property is refused: its responses cannot be located exactly.

Truncation to ``max_length`` keeps the last response: the tokens after it (no loss) go first, then the oldest
prompt tokens; a response alone longer than ``max_length`` keeps its first ``max_length`` tokens. Either way the
example says it was truncated and :func:`encode_conversations` counts them, so nothing is shortened silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapterhub.errors import ConfigError

ROLES: tuple[str, ...] = ("system", "user", "assistant")
IGNORE_INDEX = -100
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""A ChatML template (SmolLM2's layout), for tokenizers that have none: ``tokenizer.chat_template = ...``."""


@dataclass(frozen=True)
class ChatExample:
    """One tokenised conversation. ``labels[i]`` is ``input_ids[i]`` where position ``i`` carries loss, else
    ``-100``; ``truncated`` says that tokens were dropped to fit ``max_length``."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    @property
    def loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass(frozen=True)
class ChatEncoding:
    """The examples of :func:`encode_conversations` and how many of them were truncated."""

    examples: tuple[ChatExample, ...]
    truncated: int


@dataclass(frozen=True)
class GenerationPrompt:
    """Token ids to generate from (ending with the assistant header) and the reference answer, the content of the
    removed last assistant turn (``None`` when the conversation ended with a user turn)."""

    input_ids: tuple[int, ...]
    reference: str | None


def check_messages(
    messages: Sequence[Mapping[str, Any]], *, need_assistant: bool = True
) -> list[dict[str, str]]:
    """The messages as plain ``{"role", "content"}`` dicts, or :class:`ConfigError` for an unknown role, a
    non-text content, an empty assistant response or (``need_assistant``) no assistant turn at all."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ConfigError(
            'a conversation is a non-empty list of {"role": ..., "content": ...} messages; '
            f"got {type(messages).__name__}"
        )
    checked: list[dict[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ConfigError(
                f'message {index} must be a {{"role": ..., "content": ...}} object; got {message!r:.80}'
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ConfigError(f"message {index}: unknown role {role!r}; valid roles: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(f"message {index} ({role}): content must be text, got {type(content).__name__}")
        if role == "assistant" and not content.strip():
            raise ConfigError(
                f"message {index}: empty assistant response; every assistant turn needs text to learn from "
                "(drop the row or fill in the answer)"
            )
        checked.append({"role": role, "content": content})
    if need_assistant and not any(m["role"] == "assistant" for m in checked):
        raise ConfigError(
            "the conversation has no assistant turn, so nothing carries loss; add the answer as a message "
            'with role "assistant"'
        )
    return checked


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(
            f"the tokenizer {name!r} has no chat template, so conversations cannot be rendered. Use a chat "
            "model (e.g. --model smollm2) or set one: tokenizer.chat_template = "
            "adapterhub.data.chat.CHATML_TEMPLATE (or the template the model was trained with)."
        )


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _response_spans(tokenizer: Any, messages: list[dict[str, str]], ids: list[int]) -> list[tuple[int, int]]:
    """``(start, end)`` token positions of each assistant response in ``ids`` (the whole conversation), end
    exclusive and cut after the end-of-sequence token when it occurs."""
    eos = getattr(tokenizer, "eos_token_id", None)
    spans: list[tuple[int, int]] = []
    previous_end = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], generation_prompt=True)
        through = _render(tokenizer, messages[: index + 1], generation_prompt=False)
        if through != ids[: len(through)] or prompt != through[: len(prompt)] or len(prompt) < previous_end:
            raise ConfigError(
                f"the chat template does not render assistant turn {index} as a continuation of its prompt "
                "(the prompt with add_generation_prompt=True must be a token prefix of the conversation through "
                "that turn, and each turn a prefix of the next), so its response tokens cannot be located. "
                "Use a template without such rewriting (e.g. adapterhub.data.chat.CHATML_TEMPLATE)."
            )
        start, end = len(prompt), len(through)
        if eos is not None and eos in through[start:]:
            end = start + through[start:].index(eos) + 1
        if end <= start:
            raise ConfigError(f"assistant turn {index} renders to no tokens; check the chat template")
        spans.append((start, end))
        previous_end = len(through)
    return spans


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    max_length: int | None = None,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
) -> ChatExample:
    """Tokenise one conversation with ``tokenizer``'s chat template into input ids and labels.

    Loss covers every assistant response (``last_turn_only``: the last one only); ``train_on_prompt`` puts loss
    on every token instead. Longer than ``max_length``: the tokens after the last response, then the oldest
    prompt tokens are dropped so that response is kept whole; a response alone longer than ``max_length``
    keeps its first ``max_length`` tokens.
    Raises :class:`ConfigError` for bad messages (:func:`check_messages`), a tokenizer without a chat template
    or a template whose prompts are not prefixes of the rendered conversation."""
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be a positive number of tokens, got {max_length}")
    checked = check_messages(messages)
    _require_template(tokenizer)
    ids = _render(tokenizer, checked, generation_prompt=False)
    spans = _response_spans(tokenizer, checked, ids)
    if last_turn_only:
        spans = spans[-1:]
    labels = [IGNORE_INDEX] * len(ids)
    for start, end in spans:
        labels[start:end] = ids[start:end]
    if train_on_prompt:
        labels = list(ids)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        truncated = True
        start, end = spans[-1]
        # the window ends at the last response (what follows carries no loss) unless the start already fits
        begin = start if end - start > max_length else max(0, end - max_length)
        ids, labels = ids[begin : begin + max_length], labels[begin : begin + max_length]
    return ChatExample(tuple(ids), tuple(labels), truncated)


def encode_conversations(
    tokenizer: Any,
    conversations: Iterable[Sequence[Mapping[str, Any]]],
    *,
    max_length: int | None = None,
    train_on_prompt: bool = False,
    last_turn_only: bool = False,
) -> ChatEncoding:
    """:func:`encode_conversation` for each conversation, with the number that were truncated to fit
    ``max_length`` (report it: truncation is never silent). An error names the conversation's index."""
    examples: list[ChatExample] = []
    for index, messages in enumerate(conversations):
        try:
            examples.append(
                encode_conversation(
                    tokenizer,
                    messages,
                    max_length=max_length,
                    train_on_prompt=train_on_prompt,
                    last_turn_only=last_turn_only,
                )
            )
        except ConfigError as error:
            raise ConfigError(f"conversation {index}: {error}") from None
    return ChatEncoding(tuple(examples), sum(example.truncated for example in examples))


def generation_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> GenerationPrompt:
    """The prompt to generate the conversation's answer from: the conversation without its last assistant turn
    (when it ends with one), rendered with ``add_generation_prompt=True``; that turn's content is the reference.
    What remains must end with a user turn."""
    checked = check_messages(messages, need_assistant=False)
    _require_template(tokenizer)
    reference = None
    if checked[-1]["role"] == "assistant":
        reference = checked.pop()["content"]
    if not checked or checked[-1]["role"] != "user":
        raise ConfigError(
            "a generation prompt needs a user turn right before the answer; the conversation "
            f"{'is only an assistant turn' if not checked else 'has ' + checked[-1]['role'] + ' there'}"
        )
    return GenerationPrompt(tuple(_render(tokenizer, checked, generation_prompt=True)), reference)
