"""Where adapters attach in the vision and speech architectures, described as data (the text ones are in
``adapterhub.spec.architectures``, which imports this module so that every entry is registered).

ViT (transformers 5 layout): a pre-norm encoder whose layer computes ``x + attention(layernorm_before(x))`` then
``x + mlp(layernorm_after(x))``; the attention module returns ``(h, weights)``, so the ``attn`` site reads
element 0 of its output. Its attention calls the function transformers registers (``AttentionInterface``), which
is where prefix tuning extends keys and values; ``embeddings`` is the patch + position embedding module whose
output (CLS token first) prompt tuning extends.
"""

from __future__ import annotations

from adapterhub.spec.architecture import (
    ArchitectureSpec,
    InputRef,
    LinearSpec,
    SiteSpec,
    register_architecture,
)

__all__ = ["VIT"]

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
    )
)
