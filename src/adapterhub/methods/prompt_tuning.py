"""Prompt tuning (Lester et al. 2021): ``prompt_length`` trained soft tokens prepended to the input embeddings.

The prompt ``E`` ``(P, d)`` is put in front of the output of the model's input embedding module (point
``("embedding", "embeddings")``, ``ArchitectureSpec.embeddings``), after the model added its position (and token
type) embeddings there on BERT-family models, as the `adapters` library does. The attention mask gets ``P`` visible
columns in front (point ``("embedding", "mask")``, run by a pre-hook on the base model before it builds its mask),
so every real token attends to the prompt and the prompt to every real token, padding excepted. Decoders (Llama
family) number positions after the embeddings: the prompt takes positions ``0..P-1`` and the tokens ``P..``.

The model's output then has ``P`` more positions, in front: ``last_hidden_state`` is ``(B, P + T, d)`` exactly as
the `adapters` library returns it. Flexible heads see only the ``T`` real positions (classification pooling
``first`` / ``last``, tagging and LM logits line up with ``input_ids`` and labels; the model's pooler output, which
reads position 0, a prompt position, is not used). The model's built-in heads see all ``P + T`` positions.

Refused with a ``ConfigError``: GPT-2 (it builds its attention mask before its embedding output, so the mask
cannot be extended through hooks; the `adapters` library does not support it either), calls without
``input_ids``, explicit ``position_ids`` on decoders, and a non-empty key/value cache (``generate`` with
``use_cache=False`` works).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    EMBEDDING,
    EMBEDDING_LAYER,
    AdapterModule,
    EmbeddingState,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.spec.architectures import spec_for_model_type
from adapterhub.spec.configs import MethodConfig, register_config

PROMPT_POINTS: tuple[Point, ...] = ((EMBEDDING, "embeddings"), (EMBEDDING, "mask"), (EMBEDDING, "unembed"))
# ArchitectureSpec.embeddings values after which the model builds its attention mask (hooks can extend it)
SUPPORTED_EMBEDDINGS = ("embeddings", "embed_tokens", "embed_in")


@dataclass(frozen=True, kw_only=True)
class PromptTuningConfig(MethodConfig):
    """``prompt_length`` soft tokens (10). ``prompt_init``: ``"random_uniform"`` (U(-s, s), ``s =
    random_uniform_scale``, 0.5) or ``"from_string"``: the model's word embeddings of ``prompt_init_ids`` (token
    ids) or of ``prompt_init_text`` tokenised by the model's tokenizer (``AutoTokenizer.from_pretrained`` of the
    model's ``name_or_path``), repeated to ``prompt_length`` and cut. ``combine``: ``"prefix"`` (the only one).
    Parameters: ``P · d``."""

    method = "prompt_tuning"

    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    prompt_init_ids: tuple[int, ...] | None = None
    random_uniform_scale: float = 0.5
    combine: str = "prefix"

    def __post_init__(self) -> None:
        p = self.prompt_length
        if not (isinstance(p, int) and not isinstance(p, bool) and p > 0):
            raise ConfigError(f"prompt_length must be a positive integer, got {p!r}.")
        if self.prompt_init not in ("random_uniform", "from_string"):
            raise ConfigError(
                f"prompt_init={self.prompt_init!r} is not valid; choose 'random_uniform' or 'from_string'."
            )
        if self.combine != "prefix":
            raise ConfigError(f"combine={self.combine!r} is not supported; only 'prefix' is.")
        scale = self.random_uniform_scale
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
            raise ConfigError(f"random_uniform_scale must be a positive number, got {scale!r}.")
        ids = self.prompt_init_ids
        if ids is not None:
            if not (
                isinstance(ids, (list, tuple))
                and ids
                and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
            ):
                raise ConfigError(f"prompt_init_ids must be a non-empty list of token ids, got {ids!r}.")
            object.__setattr__(self, "prompt_init_ids", tuple(ids))
        if self.prompt_init == "from_string" and self.prompt_init_text is None and ids is None:
            raise ConfigError("prompt_init='from_string' needs prompt_init_text (or prompt_init_ids).")


register_config(PromptTuningConfig, {"prompt_tuning": lambda: PromptTuningConfig()})


@register_method("prompt_tuning")
class PromptTuningAdapter(AdapterModule):
    """One prompt: ``prompt_embedding.weight`` ``(P, d)`` (the `adapters` library's name)."""

    config_cls = PromptTuningConfig
    config: PromptTuningConfig
    composable = frozenset({"Stack", "BatchSplit"})
    packed_refusal = "its soft prompt is prepended to the whole row, in front of every sequence packed in it"

    def __init__(self, name: str, config: PromptTuningConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        import transformers

        if int(transformers.__version__.split(".")[0]) < 5:
            raise ConfigError(
                f"Prompt tuning needs transformers >= 5.0 (this is {transformers.__version__}): older versions build "
                "the attention mask (and, when generating, the causal mask) from the input ids' length, so the "
                "prompt positions cannot be added to it through hooks. Upgrade transformers, or use prefix tuning."
            )
        spec = spec_for_model_type(dims.model_type)
        if spec.embeddings is None:
            raise ConfigError(
                f"Prompt tuning is not supported on {dims.model_type}: its ArchitectureSpec names no embedding "
                "point (encoder-decoder models embed the source and the target separately; speech encoders start from "
                "convolutional features, not token embeddings). Use prefix tuning."
            )
        if spec.embeddings not in SUPPORTED_EMBEDDINGS:
            raise ConfigError(
                f"Prompt tuning is not supported on {dims.model_type}: the model builds its attention mask before "
                "the output of its embedding module, so the prompt positions cannot be added to it through hooks "
                "(the `adapters` library does not support it there either). Use prefix tuning instead."
            )
        self.prompt_embedding = nn.Embedding(config.prompt_length, dims.embedding_size or dims.hidden_size)
        with torch.no_grad():
            scale = float(config.random_uniform_scale)
            self.prompt_embedding.weight.uniform_(-scale, scale)

    def prepare_for_model(self, model: nn.Module) -> None:
        """``prompt_init="from_string"``: copy the model's word embeddings of the init tokens."""
        config = self.config
        if config.prompt_init != "from_string":
            return
        ids = list(config.prompt_init_ids or ())
        if not ids:
            from transformers import AutoTokenizer

            model_config: Any = getattr(model, "config", None)
            source = getattr(model_config, "tokenizer_name_or_path", None) or getattr(
                model_config, "name_or_path", ""
            )
            if not source:
                raise ConfigError(
                    "prompt_init='from_string' with prompt_init_text needs the model's tokenizer, but the model has "
                    "no name_or_path; pass prompt_init_ids (the token ids) instead."
                )
            ids = list(AutoTokenizer.from_pretrained(source)(config.prompt_init_text)["input_ids"])
        p = config.prompt_length
        ids = (ids * math.ceil(p / len(ids)))[:p]
        words: nn.Embedding = model.get_input_embeddings()  # type: ignore[operator]
        with torch.no_grad():
            vectors = words(torch.tensor(ids, device=words.weight.device))
            self.prompt_embedding.weight.copy_(vectors.to(self.prompt_embedding.weight.dtype))

    def points(self, layer: int) -> tuple[Point, ...]:
        return PROMPT_POINTS if layer == EMBEDDING_LAYER else ()

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> Any:
        if running.applied:  # an earlier adapter of this Stack already changed the embeddings
            return running
        value, p = running.value, self.config.prompt_length
        if point[1] == "embeddings":  # (B, T, d) -> (B, P + T, d)
            prompt = self.prompt_embedding.weight.to(value.dtype).unsqueeze(0).expand(value.shape[0], -1, -1)
            value = torch.cat([prompt, value], dim=1)
        elif point[1] == "mask":  # (B, T) -> (B, P + T)
            value = torch.cat([value.new_ones(value.shape[0], p), value], dim=1)
        return EmbeddingState(value, applied=True)  # "unembed": nothing to undo, but later adapters leave it
