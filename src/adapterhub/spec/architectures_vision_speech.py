"""Where adapters attach in the vision and speech architectures, described as data (the text ones are in
``adapterhub.spec.architectures``, which imports this module so that every entry is registered).

ViT (transformers 5 layout): a pre-norm encoder whose layer computes ``x + attention(layernorm_before(x))`` then
``x + mlp(layernorm_after(x))``; the attention module returns ``(h, weights)``, so the ``attn`` site reads
element 0 of its output. Its attention calls the function transformers registers (``AttentionInterface``), which
is where prefix tuning extends keys and values; ``embeddings`` is the patch + position embedding module whose
output (CLS token first) prompt tuning extends. The `adapters` library's ViT is transformers 4.57's
(``encoder.layer.<i>.attention.attention.query``, ``intermediate.dense``, ``output.dense``): its module names are
mapped by ``adapters_lib_linears``, its bottleneck modules by ``adapters_lib_sites``.

wav2vec2 (``Wav2Vec2Model``, ``Wav2Vec2ForCTC``, ...): a convolutional feature encoder, then a transformer encoder
(``encoder.layers``). Its default layer is post-LN (``LN(x + attention(x))``, then ``LN(x + feed_forward(x))``);
with ``do_stable_layer_norm`` (the large checkpoints) it is pre-LN. There is no token-embedding module to prepend a
prompt to, so prompt tuning and invertible adapters are refused; the transformer layers carry the rest.

CLIP's towers, each on its own (``CLIPVisionModel`` / ``CLIPVisionModelWithProjection``, model type
``clip_vision_model``; ``CLIPTextModel`` / ``CLIPTextModelWithProjection``, ``clip_text_model``): pre-LN layers
(``x + self_attn(layer_norm1(x))``, ``x + mlp(layer_norm2(x))``) under ``encoder.layers``. The text tower pools the
hidden state at the end-of-text token it finds in ``input_ids``; a prompt in front would move that position, so
prompt tuning is refused there.

The two-tower ``CLIPModel`` (model type ``clip``) has both towers as two layer stacks, numbered as the `adapters`
library numbers them: the text tower's layers first (``text_model.encoder.layers``, layers ``0..T-1``), then the
vision tower's (``vision_model.encoder.layers``, layers ``T..T+V-1``); its config nests one sub-config per tower
(``text_config``, ``vision_config``), from which each stack's layer facts (width, heads) are read. The towers may
differ in width, FFN size and heads (the released checkpoints do: 512 vs 768 for ViT-B/32): adapters size their
modules per stack (``ModelDims.stacks``). Invertible adapters attach at the text tower's embeddings (as in the
`adapters` library); prompt tuning is refused (the text tower pools at the end-of-text position, and the vision
tower's embeddings are not the model's token embeddings).

Whisper is an encoder-decoder whose layers are mBART's; its entry is in ``adapterhub.spec.architectures``.
"""

from __future__ import annotations

from adapterhub.spec.architecture import (
    ArchitectureSpec,
    InputRef,
    LinearSpec,
    SiteSpec,
    StackSpec,
    register_architecture,
)

__all__ = ["CLIP", "CLIP_TEXT", "CLIP_VISION", "VIT", "WAV2VEC2", "WAV2VEC2_STABLE_LN"]

VIT = register_architecture(
    ArchitectureSpec(
        model_types=("vit",),
        layers="layers",
        sites={
            "attn": SiteSpec(
                output="attention", output_index=0, residual=InputRef("layernorm_before", 0, "input")
            ),
            "ffn": SiteSpec(output="mlp", residual=InputRef("layernorm_after", 0, "input")),
        },
        linears={
            "q": LinearSpec("attention.q_proj"),
            "k": LinearSpec("attention.k_proj"),
            "v": LinearSpec("attention.v_proj"),
            "attn_out": LinearSpec("attention.o_proj"),
            "ffn_in": LinearSpec("mlp.fc1"),
            "ffn_out": LinearSpec("mlp.fc2"),
        },
        attention="attention",
        embeddings="embeddings",  # CLS token + patch embeddings + position embeddings, then dropout
        # the `adapters` library's ViT (transformers 4.57 layout): layers at encoder.layer, the attention adapter on
        # the layer, the FFN adapter on its ViTOutput, and the projections under their 4.57 names
        adapters_lib_layers="encoder.layer",
        adapters_lib_sites={"attn": "attention_adapters", "ffn": "output.output_adapters"},
        adapters_lib_linears={
            "q": "attention.attention.query",
            "k": "attention.attention.key",
            "v": "attention.attention.value",
            "attn_out": "attention.output.dense",
            "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense",
        },
    )
)

_WAV2VEC2_LINEARS = {
    "q": LinearSpec("attention.q_proj"),
    "k": LinearSpec("attention.k_proj"),
    "v": LinearSpec("attention.v_proj"),
    "attn_out": LinearSpec("attention.out_proj"),
    "ffn_in": LinearSpec("feed_forward.intermediate_dense"),
    "ffn_out": LinearSpec("feed_forward.output_dense"),
}

WAV2VEC2 = register_architecture(
    ArchitectureSpec(
        model_types=("wav2vec2",),
        layers="encoder.layers",
        sites={  # post-LN: the attention's residual is the layer input, the FFN's the input of feed_forward
            "attn": SiteSpec(
                output="attention",
                output_index=0,
                residual=InputRef("", 0, "hidden_states"),
                norm="layer_norm",
            ),
            "ffn": SiteSpec(
                output="feed_forward",
                residual=InputRef("feed_forward", 0, "hidden_states"),
                norm="final_layer_norm",
            ),
        },
        linears=_WAV2VEC2_LINEARS,
        attention="attention",
    )
)

WAV2VEC2_STABLE_LN = register_architecture(
    ArchitectureSpec(
        model_types=("wav2vec2",),
        layers="encoder.layers",
        sites={  # pre-LN: x + attention(layer_norm(x)), then x + feed_forward(final_layer_norm(x))
            "attn": SiteSpec(output="attention", output_index=0, residual=InputRef("layer_norm", 0, "input")),
            "ffn": SiteSpec(output="feed_forward", residual=InputRef("final_layer_norm", 0, "input")),
        },
        linears=_WAV2VEC2_LINEARS,
        attention="attention",
        config_match={"do_stable_layer_norm": True},
    )
)

_CLIP_LAYER = {
    "sites": {
        "attn": SiteSpec(output="self_attn", output_index=0, residual=InputRef("layer_norm1", 0, "input")),
        "ffn": SiteSpec(output="mlp", residual=InputRef("layer_norm2", 0, "input")),
    },
    "linears": {
        "q": LinearSpec("self_attn.q_proj"),
        "k": LinearSpec("self_attn.k_proj"),
        "v": LinearSpec("self_attn.v_proj"),
        "attn_out": LinearSpec("self_attn.out_proj"),
        "ffn_in": LinearSpec("mlp.fc1"),
        "ffn_out": LinearSpec("mlp.fc2"),
    },
    "attention": "self_attn",
}

CLIP_VISION = register_architecture(
    ArchitectureSpec(
        model_types=("clip_vision_model",),
        layers="encoder.layers",
        embeddings="embeddings",  # class embedding + patch embeddings + position embeddings (pre_layrnorm follows)
        **_CLIP_LAYER,  # type: ignore[arg-type]
    )
)

CLIP_TEXT = register_architecture(
    ArchitectureSpec(
        model_types=("clip_text_model",),
        layers="encoder.layers",
        embeddings="embeddings",  # token + position embeddings
        unsupported={
            "method:prompt_tuning": "CLIP's text tower pools the hidden state at the end-of-text position it finds "
            "in input_ids; a prompt in front of the tokens would move that position. Use prefix tuning or LoRA."
        },
        **_CLIP_LAYER,  # type: ignore[arg-type]
    )
)

CLIP = register_architecture(
    ArchitectureSpec(
        model_types=("clip",),
        layers="text_model.encoder.layers",
        stack_config="text_config",
        # the text tower's token + position embeddings: invertible adapters (prompt tuning is refused below)
        embeddings="text_model.embeddings",
        decoder=StackSpec(  # the vision tower: the second stack, no cross-attention
            "vision_model.encoder.layers",
            _CLIP_LAYER["sites"],  # type: ignore[arg-type]
            _CLIP_LAYER["linears"],  # type: ignore[arg-type]
            attention="self_attn",
            config="vision_config",
            adapters_lib_layers="vision_model.encoder.layers",
        ),
        # the `adapters` library's CLIP: bottleneck modules on the layer, each tower's layers under its own path
        adapters_lib_layers="text_model.encoder.layers",
        adapters_lib_sites={"attn": "attention_adapters", "ffn": "output_adapters"},
        unsupported={
            "method:prompt_tuning": "CLIPModel's text tower pools the hidden state at the end-of-text position it "
            "finds in input_ids (a prompt in front would move it), and its vision tower's embeddings are not the "
            "model's token embeddings. Use prefix tuning or LoRA, or prompt-tune the vision tower alone "
            "(CLIPVisionModelWithProjection)."
        },
        **_CLIP_LAYER,  # type: ignore[arg-type]
    )
)
