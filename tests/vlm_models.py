"""Tiny random vision-language models of each family transformers ships, built from configs (no
weights), with one multimodal input each: what tests/test_hf_vlm.py runs through the hook."""

from __future__ import annotations

import re

import torch

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
IMAGE, VIDEO, V_START, V_END = 250, 251, 252, 253  # special token ids of the tiny models
TAIL = 150  # text tokens after the visual ones: prompts of several 64-token blocks
MROPE = {"rope_type": "default", "mrope_section": [2, 3, 3]}


def _ids(*parts) -> torch.Tensor:
    out = []
    for p in parts:
        out.extend(p if isinstance(p, list) else [p])
    return torch.tensor([out])


def _text(n: int, seed: int) -> list[int]:
    return torch.randint(3, 240, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def qwen2_vl(attn: str, frames: int = 4, side: int = 4):
    """Qwen2-VL: a video of ``frames`` frames on a ``side``×``side`` patch grid (side/2 squared tokens per
    frame pair) and an image, both placed between text."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(text_config=dict(TEXT, rope_parameters=dict(MROPE, rope_theta=10000.0)),
                        vision_config=dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=14,
                                           spatial_merge_size=2, temporal_patch_size=2),
                        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    return _qwen(Qwen2VLForConditionalGeneration, cfg, attn, frames, side, patch=14)


def qwen2_5_vl(attn: str, frames: int = 4, side: int = 8):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    cfg = Qwen2_5_VLConfig(text_config=dict(TEXT, rope_parameters=dict(MROPE, rope_theta=10000.0)),
                           vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                              patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                                              fullatt_block_indexes=[1]),
                           image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    return _qwen(Qwen2_5_VLForConditionalGeneration, cfg, attn, frames, side, patch=14)


def qwen3_vl(attn: str, frames: int = 4, side: int = 4):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = Qwen3VLConfig(text_config=dict(TEXT, head_dim=16, rope_parameters=dict(MROPE, mrope_interleaved=True, rope_theta=10000.0)),
                        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                                           deepstack_visual_indexes=[1]),
                        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=V_START, vision_end_token_id=V_END)
    return _qwen(Qwen3VLForConditionalGeneration, cfg, attn, frames, side, patch=16, per_frame=True)


def _qwen(cls, cfg, attn, frames, side, patch, per_frame=False):
    """A Qwen-VL model and inputs: text, an image (one temporal patch), text, a video, text."""
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = cls(cfg).eval()
    t = frames // 2
    per_group = (side // 2) ** 2
    image = [V_START] + [IMAGE] * per_group + [V_END]
    if per_frame:  # Qwen3-VL: one vision group per temporal patch, a timestamp text token between them
        video = [tok for i in range(t) for tok in ([7 + i, V_START] + [VIDEO] * per_group + [V_END])]
    else:
        video = [V_START] + [VIDEO] * (t * per_group) + [V_END]
    ids = _ids(_text(5, 1), image, _text(3, 2), video, _text(TAIL, 3))
    dim = 3 * 2 * patch * patch
    g = torch.Generator().manual_seed(1)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                  mm_token_type_ids=(ids == IMAGE).long() + 2 * (ids == VIDEO).long(),
                  pixel_values=torch.randn(side * side, dim, generator=g), image_grid_thw=torch.tensor([[1, side, side]]),
                  pixel_values_videos=torch.randn(t * side * side, dim, generator=g),
                  video_grid_thw=torch.tensor([[t, side, side]]))
    return model, inputs


def _llava_like(model, token: int, features: int, pixel_key: str, pixels: torch.Tensor, extra=None):
    ids = _ids(_text(4, 1), [token] * features, _text(TAIL, 2))
    return model, dict(input_ids=ids, attention_mask=torch.ones_like(ids), **{pixel_key: pixels}, **(extra or {}))


def llava_onevision(attn: str):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    cfg = LlavaOnevisionConfig(text_config=dict(TEXT, model_type="qwen2"),
                               vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14),
                               image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
                               image_grid_pinpoints=[[28, 28]])
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    pixels = torch.randn(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        n = _count(model.model.get_video_features(pixels))
        try:  # transformers 5.17 appends the newline feature in forward, 5.23 in get_video_features
            model(**_llava_like(model, VIDEO, n, "pixel_values_videos", pixels)[1])
        except ValueError as err:
            n = int(re.search(r"features: (\d+)", str(err))[1])
    return _llava_like(model, VIDEO, n, "pixel_values_videos", pixels)


def llava_next_video(attn: str):
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    cfg = LlavaNextVideoConfig(text_config=dict(TEXT, model_type="llama"),
                               vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                                  num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                                                  projection_dim=32),
                               image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
                               image_grid_pinpoints=[[28, 28]], spatial_pool_stride=1)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = LlavaNextVideoForConditionalGeneration(cfg).eval()
    pixels = torch.randn(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        n = _count(model.model.get_video_features(pixels))
    return _llava_like(model, VIDEO, n, "pixel_values_videos", pixels)


def internvl(attn: str):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    cfg = InternVLConfig(text_config=dict(TEXT, model_type="qwen2"),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                            image_size=[28, 28], patch_size=[14, 14]),
                         image_token_id=IMAGE, downsample_ratio=0.5)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(cfg).eval()
    pixels = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))  # InternVL: video frames as images
    with torch.no_grad():
        n = _count(model.model.get_image_features(pixel_values=pixels))
    return _llava_like(model, IMAGE, n, "pixel_values", pixels)


def smolvlm(attn: str):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    cfg = SmolVLMConfig(text_config=dict(TEXT, model_type="llama"),
                        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           image_size=28, patch_size=14),
                        image_token_id=IMAGE, scale_factor=1)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(cfg).eval()
    pixels = torch.randn(1, 4, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(1, 4, 28, 28, dtype=torch.bool)
    with torch.no_grad():
        n = _count(model.model.get_image_features(pixel_values=pixels, pixel_attention_mask=mask))
    return _llava_like(model, IMAGE, n, "pixel_values", pixels, {"pixel_attention_mask": mask})


def _count(features) -> int:
    """The number of LM tokens a ``get_*_features`` output fills."""
    if hasattr(features, "pooler_output") and features.pooler_output is not None:
        features = features.pooler_output
    elif hasattr(features, "last_hidden_state"):
        features = features.last_hidden_state
    if isinstance(features, (list, tuple)):
        return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in features)
    return features.reshape(-1, features.shape[-1]).shape[0]


FAMILIES = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "llava_onevision": llava_onevision,
            "llava_next_video": llava_next_video, "internvl": internvl, "smolvlm": smolvlm}


def qwen2_vl_for(processor, attn: str):
    """The tiny Qwen2-VL with the vocabulary and special tokens of ``processor``'s tokenizer
    (tests/vlm_processor.py), for end-to-end runs from text and frames."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text = dict(TEXT, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                rope_parameters=dict(MROPE, rope_theta=10000.0))
    cfg = Qwen2VLConfig(text_config=text, vision_config=dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2,
                                                             patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
                        **ids)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return model
