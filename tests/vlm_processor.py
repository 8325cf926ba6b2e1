"""A CPU stand-in for a Qwen2-VL processor, for the tiny random Qwen2-VL of tests/vlm_models.py.

transformers' video processors need torchvision, and PyPI's torchvision wheels are CUDA builds
that fail to import beside the CPU torch of requirements.txt (``operator torchvision::nms does not
exist``). This stand-in does what ``Qwen2VLProcessor`` does for one video prompt, in numpy and PIL:
the chat template's ``<|vision_start|><|video_pad|><|vision_end|>``, frames resized by Qwen2-VL's
own ``smart_resize`` rule, the frame count padded to the temporal patch, patches flattened as
``[t·h·w, 3·2·14·14]`` with ``video_grid_thw``, the placeholder expanded to ``t·h·w / 4`` tokens,
and ``mm_token_type_ids``. Its text side is a byte-level tokenizer (256 bytes + special tokens).
"""

from __future__ import annotations

import numpy as np
import torch

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>")
VOCAB = 256 + len(SPECIAL)


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": [s for s in SPECIAL if s not in ("<|im_end|>", "<|endoftext|>")]})
    return fast


class Batch(dict):
    def to(self, device):
        return Batch({k: v.to(device) for k, v in self.items()})


class TinyQwen2VLProcessor:
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

    def __init__(self, patch: int = 14, merge: int = 2, temporal: int = 2, min_pixels: int = 56 * 56,
                 max_pixels: int = 56 * 84):
        self.tokenizer = byte_tokenizer()
        self.patch, self.merge, self.temporal = patch, merge, temporal
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.video_token_id = self.tokenizer.convert_tokens_to_ids("<|video_pad|>")
        self.calls: list[dict] = []  # what each call received (the tests read it)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        assert not tokenize
        out = ""
        for message in messages:
            body = "".join("<|vision_start|><|video_pad|><|vision_end|>" if part["type"] == "video" else part["text"]
                           for part in message["content"])
            out += f"<|im_start|>{message['role']}\n{body}<|im_end|>\n"
        return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def __call__(self, text, videos, video_metadata=None, do_sample_frames=True, return_tensors="pt", **kwargs):
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        assert len(text) == len(videos) == 1 and return_tensors == "pt" and not do_sample_frames
        self.calls.append({"metadata": video_metadata, "frames": len(videos[0]), "kwargs": kwargs})
        frames = np.asarray(videos[0])  # [T, H, W, 3] uint8
        h, w = smart_resize(frames.shape[1], frames.shape[2], factor=self.patch * self.merge,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        resized = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in frames])
        if len(resized) % self.temporal:
            resized = np.concatenate([resized, np.repeat(resized[-1:], self.temporal - len(resized) % self.temporal, 0)])
        x = ((resized.astype(np.float32) / 255 - self.mean) / self.std).transpose(0, 3, 1, 2)  # [T, C, H, W]
        t, gh, gw, p, m, tp = len(x) // self.temporal, h // self.patch, w // self.patch, self.patch, self.merge, self.temporal
        x = x.reshape(t, tp, 3, gh // m, m, p, gw // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        pixels = torch.from_numpy(np.ascontiguousarray(x.reshape(t * gh * gw, 3 * tp * p * p)))
        prompt = text[0].replace("<|video_pad|>", "<|video_pad|>" * (t * gh * gw // (m * m)))
        ids = torch.tensor([self.tokenizer(prompt, add_special_tokens=False).input_ids])
        return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=2 * (ids == self.video_token_id).long(),
                     pixel_values_videos=pixels, video_grid_thw=torch.tensor([[t, gh, gw]]))
