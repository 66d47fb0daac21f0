"""An image-only Qwen2.5-VL processor for environments without torchvision.

transformers' ``Qwen2_5_VLProcessor`` requires a video processor, which needs torchvision; the
CPU wheel of torch used here has no working torchvision. This processor does the same image
path: the PIL image processor, the chat template, and the expansion of each
``<|image_pad|>`` into ``prod(image_grid_thw) / merge_size**2`` placeholder tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

#: The placeholder the chat template emits for one image.
IMAGE_PAD = "<|image_pad|>"
#: Special tokens the Qwen2.5-VL chat format needs.
QWEN_SPECIALS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                  IMAGE_PAD, "<|video_pad|>")
#: Qwen2.5-VL's chat layout, reduced to user/assistant turns with images and text.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class QwenImageProcessor:
    """Qwen2.5-VL image + text processor (no video). Saves and loads like a transformers processor."""

    def __init__(self, image_processor: Qwen2VLImageProcessorPil, tokenizer: PreTrainedTokenizerBase,
                 chat_template: str = QWEN_CHAT_TEMPLATE) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    def apply_chat_template(self, conversation: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        """Render a conversation to text with the chat template."""
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def __call__(self, images: Sequence[Any], text: Sequence[str], return_tensors: str = "pt",
                 padding: bool = True, size: dict[str, int] | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Encode images and texts; each ``<|image_pad|>`` is expanded to its image's token count.

        ``size`` (``{"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}``) overrides the
        image processor's pixel range for this call only, as in transformers' Qwen2-VL processor.
        """
        vision = self.image_processor(images=list(images), return_tensors="pt", **({"size": size} if size else {}))
        merge = self.image_processor.merge_size ** 2
        counts = (vision["image_grid_thw"].prod(-1) // merge).tolist()
        expanded, k = [], 0
        for t in text:
            parts = t.split(IMAGE_PAD)
            out = parts[0]
            for part in parts[1:]:
                out += IMAGE_PAD * int(counts[k]) + part
                k += 1
            expanded.append(out)
        encoded = self.tokenizer(expanded, padding=padding, return_tensors="pt")
        return {**dict(encoded), "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}

    def save_pretrained(self, directory: str | Path) -> None:
        """Write tokenizer, image-processor config and chat template to ``directory`` (the
        template as ``chat_template.jinja``, what transformers 5 writes and reads)."""
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / CHAT_TEMPLATE_FILE).write_text(self.chat_template)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> QwenImageProcessor:
        """Load what :meth:`save_pretrained` (or a real Qwen2.5-VL checkpoint) wrote, with the
        checkpoint's own chat template (see :func:`checkpoint_chat_template`)."""
        directory = Path(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        return cls(Qwen2VLImageProcessorPil.from_pretrained(directory), tokenizer,
                   checkpoint_chat_template(directory, tokenizer))


#: Where transformers 5 keeps a processor's chat template.
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def checkpoint_chat_template(directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """The chat template a checkpoint directory ships: ``chat_template.jinja`` (transformers 5),
    else ``chat_template.json`` (earlier versions), else the tokenizer's own.

    Raises :class:`~hipp_torchprune.errors.CheckpointError` when there is none: prompting a
    model with a template it was not trained on would silently change every result.
    """
    from hipp_torchprune.errors import CheckpointError

    directory = Path(directory)
    if (directory / CHAT_TEMPLATE_FILE).is_file():
        return (directory / CHAT_TEMPLATE_FILE).read_text()
    legacy = directory / "chat_template.json"
    if legacy.is_file():
        try:
            return json.loads(legacy.read_text())["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{legacy} has no 'chat_template' string: {exc}") from exc
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise CheckpointError(f"{directory} has no chat template ({CHAT_TEMPLATE_FILE}, chat_template.json or one in "
                          "the tokenizer config)")
