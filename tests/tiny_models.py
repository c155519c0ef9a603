"""Tiny random models of every supported architecture, built from configs (no downloads)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import transformers

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)


def tiny_config(arch: str, **overrides: object) -> transformers.PretrainedConfig:
    tiny = {k: v for k, v in TINY.items() if k not in overrides}
    common = {"pad_token_id": 0, **overrides}
    if arch in SEQ2SEQ:
        return tiny_seq2seq_config(arch, **overrides)
    if arch == "bert":
        return transformers.BertConfig(**tiny, **common)
    if arch == "roberta":
        return transformers.RobertaConfig(**TINY, max_position_embeddings=66, **{**common, "pad_token_id": 1})
    if arch == "xlm-roberta":
        return transformers.XLMRobertaConfig(
            **TINY, max_position_embeddings=66, **{**common, "pad_token_id": 1}
        )
    if arch == "electra":
        return transformers.ElectraConfig(**TINY, embedding_size=16, **common)
    if arch == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37, **common
        )
    if arch in VISION + SPEECH:
        return _tiny_media_config(arch, **overrides)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=99, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2, **common
        )
    decoder = dict(tiny, **{"num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 2, **common})
    if arch == "llama":
        return transformers.LlamaConfig(**decoder)
    if arch == "mistral":
        return transformers.MistralConfig(**decoder)
    if arch == "qwen2":
        return transformers.Qwen2Config(**decoder)
    return _tiny_config_new(arch, tiny, common, decoder)


def _tiny_config_new(
    arch: str, tiny: dict[str, object], common: dict[str, object], decoder: dict[str, object]
) -> transformers.PretrainedConfig:
    """DeBERTa-v2, ModernBERT, Gemma 1/2/3, Phi-3, GPT-NeoX (2 layers, d 32, 4 heads); overrides win."""
    if arch == "deberta-v2":  # v3-style: relative attention, no absolute positions
        return transformers.DebertaV2Config(
            **{
                **tiny,
                "max_position_embeddings": 64,
                "relative_attention": True,
                "pos_att_type": ["p2c", "c2p"],
                "position_biased_input": False,
                **common,
            }
        )
    if arch == "modernbert":  # layer 0 global, layer 1 local (window ±2)
        return transformers.ModernBertConfig(
            **{
                **tiny,
                "intermediate_size": 36,
                "global_attn_every_n_layers": 2,
                "local_attention": 4,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "cls_token_id": 1,
                "sep_token_id": 2,
                **common,
            }
        )
    gemma = {"head_dim": 8, "sliding_window": 4, **decoder}
    if arch == "gemma":
        return transformers.GemmaConfig(**{k: v for k, v in gemma.items() if k != "sliding_window"})
    if arch == "gemma2":  # layer 0 sliding (window 4), layer 1 global; logit softcapping on
        return transformers.Gemma2Config(**gemma)
    if arch == "gemma3_text":  # q/k norms, sliding layer 0 (window 4), global layer 1
        return transformers.Gemma3TextConfig(
            **{"layer_types": ["sliding_attention", "full_attention"], **gemma}
        )
    if (
        arch == "phi3"
    ):  # fused qkv_proj (equal parts: as many key/value heads as query heads) and gate_up_proj
        return transformers.Phi3Config(
            **{**decoder, "num_key_value_heads": common.get("num_key_value_heads", 4)}
        )
    if arch == "gpt_neox":  # parallel residual, interleaved fused query_key_value
        return transformers.GPTNeoXConfig(**{k: v for k, v in decoder.items() if k != "num_key_value_heads"})
    raise ValueError(arch)


def _tiny_media_config(arch: str, **overrides: object) -> transformers.PretrainedConfig:
    """ViT on 16x16 RGB images in 4x4 patches (16 patches + CLS = 17 positions); wav2vec2 on raw 16 kHz audio
    (two convolutions, 400 samples -> 48 frames, a CTC vocabulary of 12); Whisper on 8 mel bins x 20 frames
    (10 encoder positions) with a vocabulary of 99. All d 32, 2 layers (per stack), 4 heads."""
    tiny = {k: v for k, v in TINY.items() if k != "vocab_size"}
    if arch == "vit":
        return transformers.ViTConfig(
            **{**tiny, "image_size": 16, "patch_size": 4, "num_channels": 3, **overrides}
        )
    if arch == "wav2vec2":
        stable = bool(overrides.get("do_stable_layer_norm", False))
        return transformers.Wav2Vec2Config(
            **{
                **tiny,
                "vocab_size": 12,
                "conv_dim": (8, 8),
                "conv_stride": (4, 2),
                "conv_kernel": (8, 4),
                "num_conv_pos_embeddings": 4,
                "num_conv_pos_embedding_groups": 2,
                "feat_extract_norm": "layer" if stable else "group",
                "pad_token_id": 0,
                **overrides,
            }
        )
    if arch == "whisper":
        return transformers.WhisperConfig(
            **{
                "vocab_size": 99,
                "d_model": 32,
                "encoder_layers": 2,
                "decoder_layers": 2,
                "encoder_attention_heads": 4,
                "decoder_attention_heads": 4,
                "encoder_ffn_dim": 37,
                "decoder_ffn_dim": 37,
                "num_mel_bins": 8,
                "max_source_positions": 10,
                "max_target_positions": 20,
                "pad_token_id": 0,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "decoder_start_token_id": 1,
                **overrides,
            }
        )
    raise ValueError(arch)


def make_audio_inputs(seed: int = 123) -> dict[str, torch.Tensor]:
    """3 random waveforms of 400 samples for the tiny wav2vec2; the last one padded after 300 samples."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 400, dtype=torch.long)
    mask[2, 300:] = 0
    return {"input_values": torch.randn(3, 400, generator=generator), "attention_mask": mask}


def make_whisper_inputs(seed: int = 123) -> dict[str, torch.Tensor]:
    """3 random log-mel inputs (3, 8 bins, 20 frames) and 4 decoder token ids each for the tiny Whisper."""
    generator = torch.Generator().manual_seed(seed)
    decoder = torch.randint(3, 99, (3, 4), generator=generator)
    decoder[:, 0] = 1  # the decoder start token
    return {"input_features": torch.randn(3, 8, 20, generator=generator), "decoder_input_ids": decoder}


def make_pixel_inputs(seed: int = 123, batch: int = 3) -> dict[str, torch.Tensor]:
    """``batch`` random 16x16 RGB images (``pixel_values`` (B, 3, 16, 16)) for the tiny vision models."""
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=generator)}


# The two-tower CLIPModel (tests/architectures/test_clip.py): towers of equal width (one adapter serves both)
CLIP_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=20,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CLIP_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=16,
    patch_size=4,
)


def build_clip(seed: int = 0, **vision_overrides: object) -> torch.nn.Module:
    """A tiny random ``CLIPModel`` in eval mode: text layers 0-1, vision layers 2-3, projection to 16."""
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=CLIP_TEXT, vision_config={**CLIP_VISION, **vision_overrides}, projection_dim=16
    )
    return transformers.CLIPModel(config).eval()


def clip_with_adapters(
    config: str, names: Sequence[str] = ("a",), **vision_overrides: object
) -> torch.nn.Module:
    """``build_clip(**vision_overrides)`` with one adapter of ``config`` per name, each perturbed (seeds 1, 2, ...)
    so that it changes outputs."""
    import adapterhub

    model = adapterhub.init(build_clip(**vision_overrides))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], seed=1 + i)
    return model


def clip_outputs(model: torch.nn.Module, inputs: dict[str, torch.Tensor], setup: object = None) -> tuple:
    """(text_embeds, image_embeds, logits_per_image) of a CLIP model under the adapter ``setup``."""
    with torch.no_grad(), model.adapter_setup(setup):
        out = model(**inputs)
    return out.text_embeds, out.image_embeds, out.logits_per_image


def make_clip_inputs(seed: int = 123, batch: int = 3) -> dict[str, torch.Tensor]:
    """``batch`` image-caption pairs for ``build_clip``: pixel values (B, 3, 16, 16) and captions of up to 6 token
    ids (BOS, words, EOS = 2, then padding 0)."""
    generator = torch.Generator().manual_seed(seed)
    words = torch.randint(3, 99, (batch, 4), generator=generator)
    lengths = [4 - (i % 3) for i in range(batch)]
    ids = torch.zeros(batch, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, : n + 2] = torch.tensor([1, *words[i, :n].tolist(), 2])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "pixel_values": torch.randn(batch, 3, 16, 16, generator=generator),
    }


# Image models (pixel_values in, no token ids): their own matrix in tests/architectures/test_vision.py
VISION = ["vit"]
SPEECH = ["wav2vec2", "whisper"]  # their own matrix in tests/architectures/test_speech.py
ENCODERS = ["bert", "roberta", "xlm-roberta", "distilbert", "electra"]
DECODERS = ["gpt2", "llama", "mistral", "qwen2"]
NEW_ENCODERS = ["deberta-v2", "modernbert"]
NEW_DECODERS = ["gemma", "gemma2", "gemma3_text", "phi3", "gpt_neox"]
ENCODERS += NEW_ENCODERS
DECODERS += NEW_DECODERS
# GPT-NeoX has no q / k / v points (its fused query_key_value interleaves them per head): tests that target them
# run on these; tests/architectures/test_new_archs.py covers GPT-NeoX's other projections
NO_QKV = ["gpt_neox"]
ARCHITECTURES = ENCODERS + DECODERS
QKV_ARCHITECTURES = [a for a in ARCHITECTURES if a not in NO_QKV]
QKV_DECODERS = [a for a in DECODERS if a not in NO_QKV]


def build(arch: str, kind: str = "base", seed: int = 0, **config_overrides: object) -> torch.nn.Module:
    """A tiny random model in eval mode: kind is base | classification | causal_lm | seq2seq_lm |
    image_classification | ctc | speech_seq2seq."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **config_overrides)
    factory = {
        "base": transformers.AutoModel,
        "classification": transformers.AutoModelForSequenceClassification,
        "causal_lm": transformers.AutoModelForCausalLM,
        "seq2seq_lm": transformers.AutoModelForSeq2SeqLM,
        "image_classification": transformers.AutoModelForImageClassification,
        "ctc": transformers.AutoModelForCTC,
        "speech_seq2seq": transformers.AutoModelForSpeechSeq2Seq,
    }[kind]
    return factory.from_config(config).eval()


def perturb(module: torch.nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Give an adapter/head weights far from identity so it visibly changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_inputs(seed: int = 123) -> dict[str, torch.Tensor]:
    """3 rows of 7 token ids; the last row has two padding positions."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (3, 7), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def shared_data_dir() -> Path | None:
    here = Path(__file__).resolve().parent.parent
    candidate = here.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


# Encoder-decoder models with different encoder and decoder depths (T5: 3 + 2, BART: 2 + 3), so that the layer
# numbering (encoder first) is tested.
SEQ2SEQ = ["t5", "mt5", "bart", "mbart"]


def tiny_seq2seq_config(arch: str, **overrides: object) -> transformers.PretrainedConfig:
    """T5 (plain ReLU FFN), mT5 (gated-GELU FFN), BART (post-LN) and mBART (pre-LN), hidden 32, 4 heads."""
    if arch in ("t5", "mt5"):
        t5 = dict(
            vocab_size=99,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=3,  # transformers 5.23 sizes T5's decoder cache by num_layers: not fewer than the decoder's
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
        if arch == "t5":
            return transformers.T5Config(**{**t5, "feed_forward_proj": "relu", **overrides})
        return transformers.MT5Config(**{**t5, "feed_forward_proj": "gated-gelu", **overrides})
    bart = dict(
        vocab_size=99,
        d_model=32,
        encoder_layers=2,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    if arch == "bart":
        return transformers.BartConfig(**{**bart, **overrides})
    if arch == "mbart":
        return transformers.MBartConfig(**{**bart, **overrides})
    raise ValueError(arch)


def make_seq2seq_inputs(seed: int = 123) -> dict[str, torch.Tensor]:
    """3 source rows of 7 ids (the last with two padding positions) and 3 target rows of 5 ids."""
    inputs = make_inputs(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    inputs["decoder_input_ids"] = torch.randint(3, 99, (3, 5), generator=generator)
    return inputs


def save_tiny_bert(directory: Path, vocab: Sequence[str], max_positions: int = 64) -> Path:
    """A 2-layer, hidden-32 BERT (random weights drawn after ``torch.manual_seed(0)``, no dropout) and a WordPiece
    tokenizer over ``vocab`` (its first entry the padding token), saved to ``directory``."""
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = transformers.BertTokenizerFast.from_pretrained(str(directory))
    assert tokenizer.vocab_size == len(vocab)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    transformers.BertModel(config).save_pretrained(str(directory))
    return directory
