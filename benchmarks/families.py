"""The model families of benchmarks/family_sweep.py: tiny configs, random init, random inputs (nothing downloaded).

Each entry builds a model and a loss function of it. Hugging Face families are built from their config class with
every size field shrunk (hidden 32, 2 layers, 4 heads, vocabulary 128, 32-pixel images, 0.1 s of audio); timm models
from ``timm.create_model(name, pretrained=False, num_classes=10, ...)`` with narrow channels and 32-pixel inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

LossFn = Callable[[nn.Module], torch.Tensor]

#: Size fields set on every Hugging Face config that has them (a field the config lacks is not passed).
SMALL: dict[str, Any] = {
    "vocab_size": 128, "hidden_size": 32, "d_model": 32, "n_embd": 32, "dim": 32, "embed_dim": 32,
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
    "num_decoder_layers": 2, "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "num_heads": 4,
    "encoder_attention_heads": 4, "decoder_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "d_kv": 8,
    "intermediate_size": 64, "ffn_dim": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "d_ff": 64, "n_inner": 64,
    "hidden_dim": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_topk": 2,
    "max_position_embeddings": 64, "n_positions": 64, "n_ctx": 64, "max_source_positions": 64,
    "max_target_positions": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "sep_token_id": 2,
    "decoder_start_token_id": 2, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "image_size": 32, "patch_size": 8, "embedding_size": 32,
    "num_mel_bins": 16,
}
#: Added for the wav2vec2-style audio encoders (a feature extractor of two convolutions).
AUDIO: dict[str, Any] = {
    "conv_dim": (16, 16), "conv_stride": (5, 2), "conv_kernel": (10, 3), "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2, "classifier_proj_size": 16, "mask_time_prob": 0.0, "tdnn_dim": (16, 16),
    "tdnn_kernel": (3, 3), "tdnn_dilation": (1, 2), "xvector_output_dim": 16,
}

SEQ = 16  # tokens per sequence; batches are 2 sequences
G = functools.partial(torch.Generator().manual_seed, 0)


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # causal, seq2seq, masked, vision, audio, timm
    build: Callable[[], tuple[nn.Module, LossFn]]


def _ids(cfg: Any, t: int = SEQ) -> torch.Tensor:
    vocab = getattr(cfg, "vocab_size", None) or 128
    return torch.randint(3, vocab, (2, t), generator=G())


def _inputs(kind: str, cfg: Any) -> dict[str, torch.Tensor]:
    if kind in ("causal", "masked"):
        ids = _ids(cfg)
        return {"input_ids": ids, "labels": ids}
    if kind == "seq2seq":
        return {"input_ids": _ids(cfg), "labels": _ids(cfg, SEQ // 2)}
    labels = torch.randint(0, cfg.num_labels, (2,), generator=G())
    if kind == "vision":
        size = getattr(cfg, "image_size", 32)
        size = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(2, getattr(cfg, "num_channels", 3), size, size, generator=G()),
                "labels": labels}
    return {"input_values": torch.randn(2, 1600, generator=G()), "labels": labels}  # audio: 0.1 s at 16 kHz


def hf_config(model_type: str, **overrides: Any) -> Any:
    """``model_type``'s config with every field of SMALL it has, then ``overrides`` (passed to its constructor, so
    derived fields such as layer_types follow)."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    fields = set(cls().to_dict())
    return cls(**{**{k: v for k, v in SMALL.items() if k in fields}, **overrides})


def hf(name: str, kind: str, auto: str, inputs: Callable[[Any], dict[str, torch.Tensor]] | None = None,
       **overrides: Any) -> Family:
    """The transformers family ``name`` (its model_type) built by ``auto`` (an Auto class or a model class)."""

    def build() -> tuple[nn.Module, LossFn]:
        import transformers

        cfg = hf_config(name, **overrides)
        cls = getattr(transformers, auto)
        model = cls.from_config(cfg) if auto.startswith("Auto") else cls(cfg)
        batch = inputs(cfg) if inputs else _inputs(kind, cfg)
        return model, lambda m: m(**batch).loss

    return Family(name, kind, build)


def timm_model(name: str, size: int = 32, factory: Callable[[], nn.Module] | None = None, **kwargs: Any) -> Family:
    def build() -> tuple[nn.Module, LossFn]:
        import timm

        model = factory() if factory else timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        x, y = torch.randn(2, 3, size, size, generator=G()), torch.randint(0, 10, (2,), generator=G())
        return model, lambda m: nn.functional.cross_entropy(m(x), y)

    return Family(f"timm:{name}", "timm", build)


def _whisper(cfg: Any) -> dict[str, torch.Tensor]:
    frames = 2 * cfg.max_source_positions
    return {"input_features": torch.randn(2, cfg.num_mel_bins, frames, generator=G()), "labels": _ids(cfg, 8)}


def _fsmt(cfg: Any) -> dict[str, torch.Tensor]:
    return {"input_ids": _ids(cfg), "labels": _ids(cfg)}  # FSMT decodes input_ids when given no decoder input


def _speech_to_text(cfg: Any) -> dict[str, torch.Tensor]:
    feats = cfg.input_feat_per_channel * cfg.input_channels
    return {"input_features": torch.randn(2, 32, feats, generator=G()), "labels": _ids(cfg, 8)}


def _ast(cfg: Any) -> dict[str, torch.Tensor]:
    return {"input_values": torch.randn(2, cfg.max_length, cfg.num_mel_bins, generator=G()),
            "labels": torch.randint(0, cfg.num_labels, (2,), generator=G())}


def _w2v_bert(cfg: Any) -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(2, 20, cfg.feature_projection_input_dim, generator=G()),
            "labels": torch.randint(0, cfg.num_labels, (2,), generator=G())}


def _nfnet() -> nn.Module:
    from timm.models import nfnet

    cfg = dataclasses.replace(nfnet.model_cfgs["dm_nfnet_f0"], depths=(1, 1, 1, 1), channels=(32, 64, 96, 128),
                              stem_chs=16, group_size=16, num_features=256)
    return nfnet.NormFreeNet(cfg, num_classes=10)


def _resnetv2_bit() -> nn.Module:
    import timm
    from timm.layers import GroupNormAct

    return timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10, channels=(32, 64, 128, 256),
                             stem_chs=16, norm_layer=functools.partial(GroupNormAct, num_groups=8))


_CAUSAL = [
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "falcon", "gpt2", "gpt_neo",
    "gpt_neox", "gptj", "gpt_bigcode", "opt", "biogpt", "bloom", "codegen", "olmo", "olmo2", "stablelm", "starcoder2",
    "cohere", "granite", "persimmon", "nemotron", "glm", "glm4", "helium", "smollm3", "xglm", "mpt", "openai-gpt",
    "ctrl", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "jetmoe", "phimoe", "dbrx", "gpt_oss",
    "mamba", "mamba2", "falcon_mamba", "rwkv", "recurrent_gemma", "jamba", "bamba", "zamba", "deepseek_v2",
    "deepseek_v3", "qwen3_next", "llama4_text", "glm4_moe", "ernie4_5_moe", "minimax", "hunyuan_v1_moe", "dots1",
    "granitemoeshared", "granitemoehybrid", "nemotron_h", "falcon_h1", "lfm2", "olmo3", "exaone4", "cohere2", "arcee",
    "apertus", "ministral", "seed_oss", "vaultgemma", "doge", "bitnet", "diffllama", "internlm3",
]
_MLA = {"kv_lora_rank": 16, "q_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
        "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1, "n_shared_experts": 1, "num_key_value_heads": 4}
_SSM = {"mamba_n_heads": 8, "mamba_d_head": 8, "mamba_d_state": 8, "mamba_chunk_size": 8}
_OVERRIDES: dict[str, dict[str, Any]] = {
    "gemma": {"head_dim": 8}, "phi": {"partial_rotary_factor": 0.5}, "gptj": {"rotary_dim": 4},
    "codegen": {"rotary_dim": 4}, "gpt_neo": {"attention_types": [[["global", "local"], 1]]},
    "gpt_oss": {"sliding_window": 8}, "deepseek_v2": _MLA, "deepseek_v3": _MLA, "dots1": {"n_shared_experts": 1},
    "dbrx": {"ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": 4, "moe_top_k": 2},
             "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}},
    "mamba": {"state_size": 8, "expand": 2}, "falcon_mamba": {"state_size": 8},
    "mamba2": {"num_heads": 8, "head_dim": 8, "n_groups": 1, "state_size": 8, "chunk_size": 8},
    "recurrent_gemma": {"lru_width": 32, "attention_window_size": 8, "block_types": ["recurrent", "attention"]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
              "mamba_d_state": 8, "mamba_expand": 2},
    "bamba": {"mamba_n_groups": 1, "attn_layer_indices": [1], **_SSM},
    "zamba": {"attn_hidden_size": 64, "mamba_d_state": 8, "mamba_expand": 2, "n_mamba_heads": 2, "num_mem_blocks": 1,
              "num_hidden_layers": 3, "layers_block_type": ["mamba", "hybrid", "hybrid"]},  # a shared block: 2 hybrids
    "falcon_h1": {"mamba_d_ssm": 64, **_SSM},
    "granitemoehybrid": {"layer_types": ["mamba", "attention"], "shared_intermediate_size": 32, **_SSM},
    "qwen3_next": {"layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 8,
                   "linear_value_head_dim": 8, "linear_num_key_heads": 2, "linear_num_value_heads": 4},
}

FAMILIES: list[Family] = [hf(n, "causal", "AutoModelForCausalLM", **_OVERRIDES.get(n, {})) for n in _CAUSAL]
FAMILIES += [hf(n, "seq2seq", "AutoModelForSeq2SeqLM") for n in (
    "bart", "mbart", "led", "blenderbot", "blenderbot-small", "pegasus", "marian", "m2m_100", "plbart", "prophetnet")]
FAMILIES += [hf(n, "seq2seq", "AutoModelForSeq2SeqLM", decoder_start_token_id=0) for n in (
    "t5", "mt5", "umt5", "longt5")]
FAMILIES += [
    hf("fsmt", "seq2seq", "AutoModelForSeq2SeqLM", inputs=_fsmt, src_vocab_size=128, tgt_vocab_size=128),
    hf("switch_transformers", "seq2seq", "AutoModelForSeq2SeqLM", decoder_start_token_id=0,
       num_sparse_encoder_layers=2, num_sparse_decoder_layers=2),  # every layer sparse
    hf("whisper", "seq2seq", "AutoModelForSpeechSeq2Seq", inputs=_whisper, max_source_positions=16),
    hf("speech_to_text", "seq2seq", "AutoModelForSpeechSeq2Seq", inputs=_speech_to_text, input_feat_per_channel=16,
       conv_channels=32, num_conv_layers=2),
]
FAMILIES += [hf(n, "masked", "AutoModelForMaskedLM") for n in (
    "bert", "roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "xlm-roberta", "camembert", "mpnet",
    "convbert", "roformer", "modernbert", "ernie", "megatron-bert", "squeezebert", "funnel",
    "longformer", "big_bird", "nystromformer", "rembert", "esm")]
FAMILIES += [hf("mobilebert", "masked", "AutoModelForMaskedLM", hidden_size=64, embedding_size=16,
                 intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2)]
FAMILIES += [hf("deit", "vision", "DeiTForImageClassification")]
FAMILIES += [hf(n, "vision", "AutoModelForImageClassification") for n in (
    "vit", "beit", "data2vec-vision", "dinov2", "dinov2_with_registers", "ijepa", "vit_msn")]
FAMILIES += [
    hf("swin", "vision", "AutoModelForImageClassification", patch_size=2, window_size=4, embed_dim=16,
       depths=[1, 1], num_heads=[2, 2]),
    hf("convnext", "vision", "AutoModelForImageClassification", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
       patch_size=4),
    hf("convnextv2", "vision", "AutoModelForImageClassification", num_stages=2, hidden_sizes=[16, 32], depths=[1, 1],
       patch_size=4),
    hf("resnet", "vision", "AutoModelForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
       layer_type="basic"),
    hf("regnet", "vision", "AutoModelForImageClassification", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
       groups_width=8),
    hf("bit", "vision", "AutoModelForImageClassification", embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
       num_groups=8),
    hf("mobilenet_v2", "vision", "AutoModelForImageClassification", depth_multiplier=0.25),
    hf("efficientnet", "vision", "AutoModelForImageClassification", width_coefficient=0.25, depth_coefficient=0.25,
       hidden_dim=320),
    hf("levit", "vision", "LevitForImageClassification", image_size=64, patch_size=16, hidden_sizes=[32, 48, 64],
       num_attention_heads=[2, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8], drop_path_rate=0, mlp_ratio=[2, 2, 2],
       attention_ratio=[2, 2, 2], down_ops=[["Subsample", 8, 2, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]]),
    hf("swinv2", "vision", "AutoModelForImageClassification", patch_size=2, window_size=4, embed_dim=16,
       depths=[1, 1], num_heads=[2, 2]),
    hf("focalnet", "vision", "AutoModelForImageClassification", patch_size=2, embed_dim=16, depths=[1, 1],
       focal_levels=[2, 2], focal_windows=[3, 3]),
    hf("pvt", "vision", "AutoModelForImageClassification", num_encoder_blocks=2, depths=[1, 1],
       sequence_reduction_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[4, 2], strides=[4, 2],
       num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    hf("pvt_v2", "vision", "AutoModelForImageClassification", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
       hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2]),
    hf("segformer", "vision", "AutoModelForImageClassification", num_encoder_blocks=2, depths=[1, 1],
       sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
       mlp_ratios=[2, 2]),
    hf("mobilevit", "vision", "AutoModelForImageClassification", hidden_sizes=[16, 24, 32],
       neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 32]),
    hf("mobilenet_v1", "vision", "AutoModelForImageClassification", depth_multiplier=0.25),
    hf("swiftformer", "vision", "AutoModelForImageClassification", depths=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32]),
    hf("hiera", "vision", "AutoModelForImageClassification", embed_dim=16, image_size=[64, 64], patch_size=[7, 7],
       patch_stride=[4, 4], patch_padding=[3, 3], depths=[1, 1], num_heads=[1, 2], num_query_pool=1,
       query_stride=[2, 2], masked_unit_size=[8, 8], masked_unit_attention=[True, False]),
    hf("poolformer", "vision", "AutoModelForImageClassification", hidden_sizes=[16, 32], depths=[1, 1],
       num_encoder_blocks=2, patch_sizes=[4, 2], strides=[4, 2], padding=[2, 0]),
]
FAMILIES += [hf(n, "audio", "AutoModelForAudioClassification", **AUDIO) for n in (
    "wav2vec2", "hubert", "wavlm", "unispeech", "unispeech-sat", "data2vec-audio", "sew", "sew-d",
    "wav2vec2-conformer")]
FAMILIES += [
    hf("wav2vec2-bert", "audio", "AutoModelForAudioClassification", inputs=_w2v_bert, feature_projection_input_dim=16,
       **AUDIO),
    hf("audio-spectrogram-transformer", "audio", "AutoModelForAudioClassification", inputs=_ast, max_length=32,
       patch_size=8, frequency_stride=8, time_stride=8),
]
FAMILIES += [
    timm_model("resnet18", channels=(16, 32, 64, 128), stem_width=16),
    timm_model("resnetv2_50x1_bit", factory=_resnetv2_bit),
    timm_model("convnext_atto", dims=(16, 32, 48, 64)),
    timm_model("mobilenetv3_small_050"),
    timm_model("efficientnet_b0"),
    timm_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    timm_model("deit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    timm_model("eva02_tiny_patch14_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
    timm_model("swin_tiny_patch4_window7_224", img_size=32, window_size=2, embed_dim=16, depths=(1, 1, 1, 1),
               num_heads=(1, 1, 2, 2)),
    timm_model("dm_nfnet_f0", factory=_nfnet),
]

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}
