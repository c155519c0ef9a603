"""An offline word-level chat tokenizer with a ChatML template (SmolLM2's layout), for tests of chat
tokenisation and instruction tuning on tiny random decoders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def save_chat_llama(directory: Path, words: Sequence[str], *, context: int) -> Any:
    """Save :func:`chat_tokenizer` over ``words`` and a tiny random Llama (torch seed 0; 2 layers, hidden 32, 4
    heads, 2 key/value heads, untied output layer, ``context`` positions, the tokenizer's special ids) into
    ``directory``, as a model folder; returns the tokenizer."""
    import torch
    import transformers

    tokenizer = chat_tokenizer(words)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(str(directory))
    return tokenizer
