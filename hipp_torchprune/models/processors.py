"""Offline word-level tokenizers and LLaVA processors for tiny models.

Both builders need no network: the tokenizer is a ``tokenizers`` WordLevel model wrapped as a
``PreTrainedTokenizerFast``, and the processor is a real ``LlavaProcessor`` (CLIP image
processor + that tokenizer + the LLaVA-1.5 chat template), so a model saved with it loads and is
prompted exactly as a LLaVA checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

#: Splits text into words and runs of punctuation (what the word-level vocabulary is made of).
WORD_PATTERN = r"\w+|[^\w\s]+"

#: LLaVA-1.5 (llava-hf) chat template: ``USER: <image>\n{text} ASSISTANT:``.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: Words every LLaVA-style prompt/answer needs besides the data's own words.
BASE_WORDS: tuple[str, ...] = (
    "USER", "ASSISTANT", "SYSTEM", ":", "Yes", "No", "yes", "no",
    *[chr(ord("A") + i) for i in range(26)], *[str(i) for i in range(10)],
)


def words_of(texts: Iterable[str]) -> set[str]:
    """The word-level tokens (``WORD_PATTERN`` matches) occurring in ``texts``."""
    import re

    pattern = re.compile(WORD_PATTERN)
    out: set[str] = set()
    for t in texts:
        out.update(pattern.findall(t))
    return out


def build_word_tokenizer(
    words: Iterable[str],
    *,
    bos_token: str = "<s>",
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
    extra_special_tokens: Sequence[str] = ("<image>",),
    add_bos: bool = True,
    padding_side: Literal["left", "right"] = "left",
) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer offline.

    Args:
        words: vocabulary words (deduplicated and sorted; ``BASE_WORDS`` are always added).
            Text is split with ``WORD_PATTERN``; a word not in the vocabulary becomes ``unk_token``.
        bos_token, eos_token, pad_token, unk_token: special tokens (ids 0..3 in that order:
            pad, unk, bos, eos).
        extra_special_tokens: further special tokens, e.g. the ``<image>`` placeholder; they are
            never split and get the ids after the four above.
        add_bos: prepend ``bos_token`` when encoding with special tokens.
        padding_side: default padding side ("left" suits last-position scoring).

    Returns:
        A ``PreTrainedTokenizerFast``; decoding joins words with spaces.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [pad_token, unk_token, bos_token, eos_token, *extra_special_tokens]
    vocab_words = sorted(set(words) | set(BASE_WORDS) - set(specials))
    vocab = {tok: i for i, tok in enumerate([*specials, *vocab_words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated", invert=False)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), tok.pre_tokenizer])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, vocab[bos_token])])
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos_token, eos_token=eos_token, pad_token=pad_token,
        unk_token=unk_token, padding_side=padding_side,
        extra_special_tokens={"image_token": extra_special_tokens[0]} if extra_special_tokens else None,
    )
    return fast


def build_llava_processor(
    words: Iterable[str],
    image_size: int,
    patch_size: int,
    *,
    vision_feature_select_strategy: Literal["default", "full"] = "default",
    image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
    image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
    chat_template: str = LLAVA_CHAT_TEMPLATE,
    padding_side: Literal["left", "right"] = "left",
) -> LlavaProcessor:
    """Build a real ``LlavaProcessor`` for a tiny LLaVA with a word-level tokenizer.

    Args:
        words: vocabulary words for :func:`build_word_tokenizer`.
        image_size: input side in pixels (images are resized + centre-cropped to it).
        patch_size: vision patch size; the processor expands ``<image>`` to
            ``(image_size // patch_size) ** 2`` tokens ("default" strategy drops CLS) or one
            more ("full").
        vision_feature_select_strategy: must match the model config's.
        image_mean, image_std: pixel normalization (CLIP's by default).
        chat_template: Jinja chat template (LLaVA-1.5's by default).
        padding_side: tokenizer padding side.

    Returns:
        A ``LlavaProcessor`` that ``save_pretrained`` / ``AutoProcessor.from_pretrained`` round-trip.
    """
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_resize=True, do_center_crop=True, do_normalize=True, do_convert_rgb=True,
        image_mean=list(image_mean), image_std=list(image_std),
    )
    tokenizer = build_word_tokenizer(words, padding_side=padding_side)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy=vision_feature_select_strategy,
        chat_template=chat_template, image_token="<image>", num_additional_image_tokens=1,
    )


#: Default cap on a calibration image's pixel count: 1280 visual tokens of 28x28 pixels, the
#: upper end of the token range Qwen2.5-VL's model card recommends (``max_pixels = 1280*28*28``).
#: Qwen2.5-VL checkpoints themselves allow 12,845,056 pixels: a 4032x3024 photo would become
#: 15,552 image tokens. Fixed-resolution processors (LLaVA's 336x336) are not affected.
DEFAULT_MAX_PIXELS = 1280 * 28 * 28


def pixel_cap_kwargs(processor: Any, max_pixels: int) -> dict[str, Any]:
    """Processor-call keyword arguments that cap each image at ``max_pixels`` pixels.

    Only processors whose image processor resizes dynamically between a minimum and a maximum
    pixel count (``size.longest_edge``, as Qwen2-VL's does) are capped; for any other processor
    the result is empty. A cap above the processor's own maximum leaves that maximum.
    """
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    shortest = size.get("shortest_edge") if isinstance(size, dict) else getattr(size, "shortest_edge", None)
    if not longest or not shortest:
        return {}
    return {"size": {"shortest_edge": min(int(shortest), max_pixels), "longest_edge": min(int(longest), max_pixels)}}


class PixelCappedProcessor:
    """``processor`` with every call capped at ``max_pixels`` pixels per image (see
    :func:`pixel_cap_kwargs`); every other attribute is the processor's own, and the processor
    itself is left unchanged (so a checkpoint saved with it keeps its own settings)."""

    def __init__(self, processor: Any, max_pixels: int) -> None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            from hipp_torchprune.errors import CalibrationError

            raise CalibrationError(f"max_pixels must be a positive number of pixels, got {max_pixels!r}")
        self.processor = processor
        self.max_pixels = max_pixels
        self._kwargs = pixel_cap_kwargs(processor, max_pixels)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the processor with the pixel cap (explicit keyword arguments win)."""
        return self.processor(*args, **{**self._kwargs, **kwargs})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


def cap_pixels(processor: Any, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Any:
    """``processor`` capped at ``max_pixels`` pixels per image; ``None`` returns it unchanged."""
    return processor if max_pixels is None else PixelCappedProcessor(processor, max_pixels)
