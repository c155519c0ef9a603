"""An offline word-level chat tokenizer with a ChatML template (SmolLM2's layout), for tests of chat
tokenisation and instruction tuning on tiny random decoders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterhub.data.chat import CHATML_TEMPLATE

SPECIALS = ("<unk>", "<|im_start|>", "<|im_end|>", "\n")


def chat_tokenizer(words: Sequence[str]) -> Any:
    """A word-level tokenizer over ``words``: ``<|im_start|>``/``<|im_end|>`` specials (``<|im_end|>`` is the eos
    and the pad token, as in SmolLM2), ``\\n`` a token of its own, and a ChatML template."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[^\S\n]+"), "removed"), pre_tokenizers.Split("\n", "isolated")]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer
