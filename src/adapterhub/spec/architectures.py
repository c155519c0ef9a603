"""Where adapters attach in each supported architecture, described as data.

An ``ArchitectureSpec`` names, relative to one transformer layer, the modules around each adapter *site*
(``attn`` after the attention sub-layer, ``ffn`` after the feed-forward sub-layer):

- ``output``: the module whose forward output is the sub-layer output ``h`` (before the residual add);
- ``residual``: the module whose input (positional index or keyword) is the residual stream ``input``;
- ``norm``: in post-norm models the LayerNorm that computes ``LN(h + input)``; ``None`` in pre-norm models, where
  the layer itself adds ``h`` to the residual stream.

It also names, as data, the other attachment points of the method protocol (``adapterhub.methods.base``):

- ``linears``: the linear projections ``q``, ``k``, ``v``, ``attn_out``, ``ffn_in``, ``ffn_gate`` (gated FFNs only),
  ``ffn_out`` by module path; a slice of a fused projection (GPT-2's ``c_attn`` holds q, k and v) is
  ``LinearSpec(module, part=(index, parts))``; ``transposed`` marks ``Conv1D`` weights stored ``(d_in, d_out)``;
- ``attention``: the self-attention module, whose keys and values prefix tuning extends through the attention
  function transformers calls (``AttentionInterface``).

Encoder-decoder models (T5, BART) describe the encoder with these fields and the decoder with ``decoder``, a
``StackSpec`` whose layers also have the ``cross_attn`` site, the ``cross_q`` / ``cross_k`` / ``cross_v`` /
``cross_out`` projections and the ``cross_attention`` module; layers are numbered encoder first, then decoder.

The injection code registers forward hooks on exactly these modules; no transformers forward is copied. Adding an
architecture is one ``register_architecture(...)`` entry plus one row in the test matrix.
"""

from __future__ import annotations

from dataclasses import replace

from adapterhub.spec.architecture import (
    ArchitectureSpec,
    InputRef,
    LinearSpec,
    SiteSpec,
    StackSpec,
    layer_config,
    register_architecture,
    spec_for_config,
    spec_for_model_type,
    stack_config,
    supported_model_types,
    unsupported_points,
)

__all__ = [
    "ArchitectureSpec",
    "InputRef",
    "LinearSpec",
    "SiteSpec",
    "StackSpec",
    "layer_config",
    "register_architecture",
    "spec_for_config",
    "spec_for_model_type",
    "stack_config",
    "supported_model_types",
    "unsupported_points",
]

_BERT_LIKE_SITES = {
    "attn": SiteSpec(
        output="attention.output.dropout",
        residual=InputRef("attention.output", 1, "input_tensor"),
        norm="attention.output.LayerNorm",
    ),
    "ffn": SiteSpec(
        output="output.dropout",
        residual=InputRef("output", 1, "input_tensor"),
        norm="output.LayerNorm",
    ),
}

BERT = register_architecture(
    ArchitectureSpec(
        model_types=("bert", "roberta", "xlm-roberta", "electra"),
        layers="encoder.layer",
        sites=_BERT_LIKE_SITES,
        adapters_lib_sites={"attn": "attention.output", "ffn": "output"},
        adapters_lib_layers="encoder.layer",
        linears={
            "q": LinearSpec("attention.self.query"),
            "k": LinearSpec("attention.self.key"),
            "v": LinearSpec("attention.self.value"),
            "attn_out": LinearSpec("attention.output.dense"),
            "ffn_in": LinearSpec("intermediate.dense"),
            "ffn_out": LinearSpec("output.dense"),
        },
        attention="attention.self",
        embeddings="embeddings",  # word + position (+ token type) embeddings, LayerNorm, dropout
    )
)

DISTILBERT = register_architecture(
    ArchitectureSpec(
        model_types=("distilbert",),
        layers="transformer.layer",
        hidden_size_attr="dim",
        sites={
            "attn": SiteSpec(
                output="attention",
                output_index=0,
                residual=InputRef("", 0, "hidden_states"),
                norm="sa_layer_norm",
            ),
            "ffn": SiteSpec(output="ffn", residual=InputRef("ffn", 0, "input"), norm="output_layer_norm"),
        },
        adapters_lib_sites={"attn": "attention", "ffn": "ffn"},
        adapters_lib_layers="transformer.layer",
        linears={
            "q": LinearSpec("attention.q_lin"),
            "k": LinearSpec("attention.k_lin"),
            "v": LinearSpec("attention.v_lin"),
            "attn_out": LinearSpec("attention.out_lin"),
            "ffn_in": LinearSpec("ffn.lin1"),
            "ffn_out": LinearSpec("ffn.lin2"),
        },
        attention="attention",
        embeddings="embeddings",
    )
)

GPT2 = register_architecture(
    ArchitectureSpec(
        model_types=("gpt2",),
        layers="h",
        hidden_size_attr="n_embd",
        sites={
            "attn": SiteSpec(output="attn", output_index=0, residual=InputRef("ln_1", 0, "input")),
            "ffn": SiteSpec(output="mlp", residual=InputRef("ln_2", 0, "input")),
        },
        adapters_lib_sites={"attn": "attn", "ffn": "mlp"},
        adapters_lib_layers="h",
        adapters_lib_bottleneck_sites={"attn": "attention_adapters", "ffn": "output_adapters"},
        linears={
            "q": LinearSpec("attn.c_attn", part=(0, 3), transposed=True),
            "k": LinearSpec("attn.c_attn", part=(1, 3), transposed=True),
            "v": LinearSpec("attn.c_attn", part=(2, 3), transposed=True),
            "attn_out": LinearSpec("attn.c_proj", transposed=True),
            "ffn_in": LinearSpec("mlp.c_fc", transposed=True),
            "ffn_out": LinearSpec("mlp.c_proj", transposed=True),
        },
        attention="attn",
        embeddings="drop",  # wte + wpe, then dropout (what the `adapters` library hooks; not wte alone)
    )
)

LLAMA = register_architecture(
    ArchitectureSpec(
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        layers="layers",
        sites={
            "attn": SiteSpec(
                output="self_attn", output_index=0, residual=InputRef("input_layernorm", 0, "hidden_states")
            ),
            "ffn": SiteSpec(output="mlp", residual=InputRef("post_attention_layernorm", 0, "hidden_states")),
        },
        adapters_lib_sites={"attn": "self_attn", "ffn": "mlp"},
        adapters_lib_layers="layers",
        linears={
            "q": LinearSpec("self_attn.q_proj"),
            "k": LinearSpec("self_attn.k_proj"),
            "v": LinearSpec("self_attn.v_proj"),
            "attn_out": LinearSpec("self_attn.o_proj"),
            "ffn_in": LinearSpec("mlp.up_proj"),
            "ffn_gate": LinearSpec("mlp.gate_proj"),
            "ffn_out": LinearSpec("mlp.down_proj"),
        },
        attention="self_attn",
        adapters_lib_lora={"intermediate": "ffn_out", "output": "ffn_in"},  # that library's Llama naming
        embeddings="embed_tokens",
    )
)

DEBERTA_V2 = register_architecture(
    ArchitectureSpec(
        model_types=("deberta-v2",),  # DeBERTa-v2 and v3 (v3 checkpoints use this model type)
        layers="encoder.layer",
        sites=_BERT_LIKE_SITES,  # DebertaV2SelfOutput / DebertaV2Output: dense, dropout, LayerNorm(h + input)
        linears={
            "q": LinearSpec("attention.self.query_proj"),
            "k": LinearSpec("attention.self.key_proj"),
            "v": LinearSpec("attention.self.value_proj"),
            "attn_out": LinearSpec("attention.output.dense"),
            "ffn_in": LinearSpec("intermediate.dense"),
            "ffn_out": LinearSpec("output.dense"),
        },
        attention="attention.self",
        embeddings="embeddings",
        unsupported={
            "attention:self": "DeBERTa's DisentangledSelfAttention computes its content-to-position and "
            "position-to-content scores itself instead of calling an attention function from transformers' "
            "AttentionInterface, so prefix tuning cannot reach its keys and values. Use LoRA, a bottleneck or a "
            "parallel adapter instead.",
            "method:prompt_tuning": "DebertaV2Embeddings multiplies its output by the attention mask inside the "
            "module, before a prompt could be prepended to that output, so the prompt positions cannot join the mask "
            "through hooks. Use LoRA or a bottleneck adapter instead.",
        },
    )
)

MODERNBERT = register_architecture(
    ArchitectureSpec(
        model_types=("modernbert",),
        layers="layers",
        sites={  # pre-LN; layer 0's attn_norm is an Identity
            "attn": SiteSpec(output="attn", output_index=0, residual=InputRef("attn_norm", 0, "input")),
            "ffn": SiteSpec(output="mlp", residual=InputRef("mlp_norm", 0, "input")),
        },
        linears={
            "q": LinearSpec("attn.Wqkv", part=(0, 3)),
            "k": LinearSpec("attn.Wqkv", part=(1, 3)),
            "v": LinearSpec("attn.Wqkv", part=(2, 3)),
            "attn_out": LinearSpec("attn.Wo"),
            "ffn_gate": LinearSpec("mlp.Wi", part=(0, 2)),  # Wo(act(first half) * second half)
            "ffn_in": LinearSpec("mlp.Wi", part=(1, 2)),
            "ffn_out": LinearSpec("mlp.Wo"),
        },
        attention="attn",
        embeddings="embeddings",  # token embeddings, LayerNorm, dropout
    )
)

_GATED_MLP = {
    "ffn_in": LinearSpec("mlp.up_proj"),
    "ffn_gate": LinearSpec("mlp.gate_proj"),
    "ffn_out": LinearSpec("mlp.down_proj"),
}
_SELF_ATTN_PROJ = {
    "q": LinearSpec("self_attn.q_proj"),
    "k": LinearSpec("self_attn.k_proj"),
    "v": LinearSpec("self_attn.v_proj"),
    "attn_out": LinearSpec("self_attn.o_proj"),
}

GEMMA = register_architecture(
    ArchitectureSpec(
        model_types=("gemma",),
        layers="layers",
        sites={
            "attn": SiteSpec(
                output="self_attn", output_index=0, residual=InputRef("input_layernorm", 0, "x")
            ),
            "ffn": SiteSpec(output="mlp", residual=InputRef("post_attention_layernorm", 0, "x")),
        },
        linears={**_SELF_ATTN_PROJ, **_GATED_MLP},
        attention="self_attn",
        embeddings="embed_tokens",  # transformers 5: token embeddings times sqrt(hidden); 4.x scales after it
    )
)

GEMMA2 = register_architecture(
    ArchitectureSpec(
        model_types=("gemma2", "gemma3_text"),
        layers="layers",
        sites={  # sandwich norms: the sub-layer output h is the post-norm's output, added to the residual stream
            "attn": SiteSpec(output="post_attention_layernorm", residual=InputRef("input_layernorm", 0, "x")),
            "ffn": SiteSpec(
                output="post_feedforward_layernorm", residual=InputRef("pre_feedforward_layernorm", 0, "x")
            ),
        },
        linears={**_SELF_ATTN_PROJ, **_GATED_MLP},
        attention="self_attn",
        embeddings="embed_tokens",  # token embeddings times sqrt(hidden)
    )
)

_QKV_UNITS = ("num_attention_heads", "num_key_value_heads", "num_key_value_heads")

PHI3 = register_architecture(
    ArchitectureSpec(
        model_types=("phi3",),
        layers="layers",
        sites={
            "attn": SiteSpec(
                output="self_attn", output_index=0, residual=InputRef("input_layernorm", 0, "hidden_states")
            ),
            "ffn": SiteSpec(output="mlp", residual=InputRef("post_attention_layernorm", 0, "hidden_states")),
        },
        linears={
            "q": LinearSpec("self_attn.qkv_proj", part=(0, 3), part_units=_QKV_UNITS),
            "k": LinearSpec("self_attn.qkv_proj", part=(1, 3), part_units=_QKV_UNITS),
            "v": LinearSpec("self_attn.qkv_proj", part=(2, 3), part_units=_QKV_UNITS),
            "attn_out": LinearSpec("self_attn.o_proj"),
            "ffn_gate": LinearSpec("mlp.gate_up_proj", part=(0, 2)),  # down(up * act(gate))
            "ffn_in": LinearSpec("mlp.gate_up_proj", part=(1, 2)),
            "ffn_out": LinearSpec("mlp.down_proj"),
        },
        attention="self_attn",
        embeddings="embed_tokens",
    )
)

_NEOX_QKV = (
    "GPT-NeoX's attention.query_key_value interleaves query, key and value per head (rows h·3·d_head + i·d_head), "
    "which is not a contiguous slice of the fused projection, so q, k and v cannot be targeted one by one. Target "
    "attn_out, ffn_in or ffn_out instead."
)

GPT_NEOX = register_architecture(
    ArchitectureSpec(
        model_types=("gpt_neox",),
        layers="layers",
        # use_parallel_residual (the default): both sites read the layer input x and the layer adds both outputs,
        # x + h_attn + h_ffn; each site is a pre-LN sub-layer whose residual stream is x
        sites={
            "attn": SiteSpec(
                output="attention", output_index=0, residual=InputRef("input_layernorm", 0, "input")
            ),
            "ffn": SiteSpec(output="mlp", residual=InputRef("post_attention_layernorm", 0, "input")),
        },
        linears={
            "attn_out": LinearSpec("attention.dense"),
            "ffn_in": LinearSpec("mlp.dense_h_to_4h"),
            "ffn_out": LinearSpec("mlp.dense_4h_to_h"),
        },
        attention="attention",
        embeddings="embed_in",  # the attention mask is built from this output; dropout follows
        unsupported={f"linear:{point}": _NEOX_QKV for point in ("q", "k", "v")},
    )
)

# ------------------------------------------------------------------------------------------ encoder-decoder specs
# Layers are numbered encoder first, then decoder (leave_out counts both, as in the `adapters` library). Decoder
# layers have a third residual site, ``cross_attn`` (after cross-attention), and the linear points ``cross_q``,
# ``cross_k``, ``cross_v``, ``cross_out``. No embedding points (invertible adapters and prompt tuning are refused).


def _t5_ffn(block: str, gated: bool) -> dict[str, LinearSpec]:
    ffn = f"layer.{block}.DenseReluDense"
    if gated:  # T5 v1.1, Flan-T5, mT5: act(wi_0 x) * wi_1 x
        return {
            "ffn_in": LinearSpec(f"{ffn}.wi_1"),
            "ffn_gate": LinearSpec(f"{ffn}.wi_0"),
            "ffn_out": LinearSpec(f"{ffn}.wo"),
        }
    return {"ffn_in": LinearSpec(f"{ffn}.wi"), "ffn_out": LinearSpec(f"{ffn}.wo")}


def _t5_spec(gated: bool) -> ArchitectureSpec:
    self_attn = "layer.0.SelfAttention"
    attn_linears = {
        "q": LinearSpec(f"{self_attn}.q"),
        "k": LinearSpec(f"{self_attn}.k"),
        "v": LinearSpec(f"{self_attn}.v"),
        "attn_out": LinearSpec(f"{self_attn}.o"),
    }
    attn_site = SiteSpec(
        output=self_attn, output_index=0, residual=InputRef("layer.0.layer_norm", 0, "hidden_states")
    )
    return ArchitectureSpec(
        model_types=("t5", "mt5"),
        layers="encoder.block",
        hidden_size_attr="d_model",
        sites={
            "attn": attn_site,
            "ffn": SiteSpec(
                output="layer.1.DenseReluDense", residual=InputRef("layer.1.layer_norm", 0, "hidden_states")
            ),
        },
        linears={**attn_linears, **_t5_ffn("1", gated)},
        attention=self_attn,
        decoder=StackSpec(
            layers="decoder.block",
            sites={
                "attn": attn_site,
                "cross_attn": SiteSpec(
                    output="layer.1.EncDecAttention",
                    output_index=0,
                    residual=InputRef("layer.1.layer_norm", 0, "hidden_states"),
                ),
                "ffn": SiteSpec(
                    output="layer.2.DenseReluDense",
                    residual=InputRef("layer.2.layer_norm", 0, "hidden_states"),
                ),
            },
            linears={
                **attn_linears,
                "cross_q": LinearSpec("layer.1.EncDecAttention.q"),
                "cross_k": LinearSpec("layer.1.EncDecAttention.k"),
                "cross_v": LinearSpec("layer.1.EncDecAttention.v"),
                "cross_out": LinearSpec("layer.1.EncDecAttention.o"),
                **_t5_ffn("2", gated),
            },
            attention=self_attn,
            cross_attention="layer.1.EncDecAttention",
        ),
        config_match={"is_gated_act": gated},
    )


T5 = register_architecture(_t5_spec(gated=False))
T5_GATED = register_architecture(_t5_spec(gated=True))


def _bart_spec(model_types: tuple[str, ...], pre_norm: bool) -> ArchitectureSpec:
    """BART (post-LN: ``LN(x + dropout(h))`` after each sub-layer) and mBART (pre-LN: ``x + dropout(h)`` with the
    LayerNorm before the sub-layer)."""

    def site(output: str, norm: str, post_norm_residual: InputRef) -> SiteSpec:
        if pre_norm:
            return SiteSpec(output=output, output_index=0, residual=InputRef(norm, 0, "input"))
        return SiteSpec(output=output, output_index=0, residual=post_norm_residual, norm=norm)

    attn = site("self_attn", "self_attn_layer_norm", InputRef("", 0, "hidden_states"))
    if pre_norm:
        ffn = SiteSpec(output="fc2", residual=InputRef("final_layer_norm", 0, "input"))
    else:
        ffn = SiteSpec(output="fc2", residual=InputRef("fc1", 0, "input"), norm="final_layer_norm")
    linears = {
        "q": LinearSpec("self_attn.q_proj"),
        "k": LinearSpec("self_attn.k_proj"),
        "v": LinearSpec("self_attn.v_proj"),
        "attn_out": LinearSpec("self_attn.out_proj"),
        "ffn_in": LinearSpec("fc1"),
        "ffn_out": LinearSpec("fc2"),
    }
    return ArchitectureSpec(
        model_types=model_types,
        layers="encoder.layers",
        hidden_size_attr="d_model",
        sites={"attn": attn, "ffn": ffn},
        linears=linears,
        attention="self_attn",
        decoder=StackSpec(
            layers="decoder.layers",
            sites={
                "attn": attn,
                "cross_attn": site(
                    "encoder_attn", "encoder_attn_layer_norm", InputRef("encoder_attn", 0, "hidden_states")
                ),
                "ffn": ffn,
            },
            linears={
                **linears,
                "cross_q": LinearSpec("encoder_attn.q_proj"),
                "cross_k": LinearSpec("encoder_attn.k_proj"),
                "cross_v": LinearSpec("encoder_attn.v_proj"),
                "cross_out": LinearSpec("encoder_attn.out_proj"),
            },
            attention="self_attn",
            cross_attention="encoder_attn",
        ),
    )


BART = register_architecture(_bart_spec(("bart",), pre_norm=False))
MBART = register_architecture(_bart_spec(("mbart",), pre_norm=True))
# Whisper's encoder and decoder layers are mBART's (pre-LN, the same module names); its encoder reads log-mel
# features through two convolutions, its decoder token ids
# The `adapters` library's Whisper (transformers 4.57, the same module names) numbers the encoder's layers, then the
# decoder's, as we do, but names each stack's weights by its own path and local index (``decoder.layers.0`` is layer
# ``E``): the two-stack translation of ``adapterhub.io.adapters_lib_stacks``. Its bottleneck modules sit on the layer;
# its q/k/v LoRA is on every attention, the decoder's cross-attention (our cross_q/k/v) included.
_WHISPER = _bart_spec(("whisper",), pre_norm=True)
assert _WHISPER.decoder is not None
WHISPER = register_architecture(
    replace(
        _WHISPER,
        adapters_lib_layers="encoder.layers",
        adapters_lib_sites={
            "attn": "attention_adapters",
            "cross_attn": "cross_attention_adapters",
            "ffn": "output_adapters",
        },
        decoder=replace(_WHISPER.decoder, adapters_lib_layers="decoder.layers"),
    )
)

# The vision and speech entries live in their own module; importing it here registers them with the text ones.
from adapterhub.spec import architectures_vision_speech as _vision_speech  # noqa: E402, F401
