"""Tiny random VLMs built offline, with real processors, for tests and quick runs.

``tiny-llava`` and ``tiny-qwen2_5_vl`` have the real architectures (transformers'
``LlavaForConditionalGeneration`` and ``Qwen2_5_VLForConditionalGeneration``) at toy sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from hipp_torchprune.errors import UnknownPluginError
from hipp_torchprune.models.processors import build_llava_processor, build_word_tokenizer
from hipp_torchprune.models.qwen_processor import IMAGE_PAD, QWEN_SPECIALS, QwenImageProcessor

#: Words the tiny tokenizers know (enough for POPE/ScienceQA-style prompts).
TINY_WORDS: tuple[str, ...] = tuple(
    "USER ASSISTANT user assistant Is is there a an the in image ? . , : Yes No yes no A B C D E "
    "Answer question using single word or phrase with option's letter from given choices directly "
    "Context How many objects What colour red blue green which left right".split()
)


def tiny_llava(seed: int = 0, intermediate_size: int = 256, num_layers: int = 4) -> tuple[nn.Module, Any]:
    """A random LLaVA (CLIP 32px/patch 8 -> 16 image tokens, Llama hidden 64) and its processor."""
    processor = build_llava_processor(TINY_WORDS, image_size=32, patch_size=8)
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                       max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                         vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    return model, processor


def tiny_qwen2_5_vl(seed: int = 0, intermediate_size: int = 256, num_layers: int = 4) -> tuple[nn.Module, Any]:
    """A random Qwen2.5-VL (56px images -> 4 merged image tokens, Qwen2 hidden 64, ``lm_head`` tied to
    the input embeddings as in Qwen2.5-VL-3B) and its processor."""
    specials = (IMAGE_PAD, *(t for t in QWEN_SPECIALS if t != IMAGE_PAD))
    tokenizer = build_word_tokenizer(TINY_WORDS, extra_special_tokens=specials)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        text_config=dict(hidden_size=64, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                         max_position_embeddings=512, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,  # like Qwen2.5-VL-3B: lm_head shares embed_tokens' weight
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    return model, QwenImageProcessor(image_processor, tokenizer)


#: Names accepted by ``--model`` for tiny random models.
TINY_MODELS: dict[str, Callable[..., tuple[nn.Module, Any]]] = {
    "tiny-llava": tiny_llava,
    "tiny-qwen2_5_vl": tiny_qwen2_5_vl,
}


def build_tiny(name: str, seed: int = 0) -> tuple[nn.Module, Any]:
    """Build the tiny model called ``name`` (see :data:`TINY_MODELS`)."""
    if name not in TINY_MODELS:
        raise UnknownPluginError(f"unknown tiny model '{name}'; valid names: {', '.join(sorted(TINY_MODELS))}")
    return TINY_MODELS[name](seed=seed)
