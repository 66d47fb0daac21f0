"""Model adapters: where a VLM keeps its language backbone, MLPs and vision tokens."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class MLPProjections:
    """The three projections of one SwiGLU MLP; intermediate channel ``j`` is
    row ``j`` of ``gate`` and ``up`` and column ``j`` of ``down``."""

    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


def chat_texts(processor: Any, prompts: Sequence[str], answers: Sequence[str] | None = None) -> list[str]:
    """Render ``prompts`` with the processor's chat template (one image each, generation prompt
    added); append ``answers`` when given."""
    texts = []
    for i, prompt in enumerate(prompts):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
        texts.append(text + (answers[i] if answers is not None else ""))
    return texts


class ModelAdapter(ABC):
    """Knows one VLM family's layout. Subclasses set ``name`` and ``model_class_names``.

    An adapter never copies weights; it only points at modules of ``model``.
    """

    #: Registry name, e.g. ``"llava"``.
    name: ClassVar[str]
    #: Class names (``type(model).__name__``) this adapter handles.
    model_class_names: ClassVar[tuple[str, ...]]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def handles(cls, model: nn.Module) -> bool:
        """Whether this adapter understands ``model``."""
        return type(model).__name__ in cls.model_class_names

    def language_model(self) -> nn.Module:
        """The decoder-only language backbone (``model.model.language_model``)."""
        return self.model.model.language_model

    def decoder_layers(self) -> Sequence[nn.Module]:
        """The language model's decoder layers, in depth order."""
        return list(self.language_model().layers)

    def mlp(self, index: int) -> MLPProjections:
        """The gate/up/down projections of decoder layer ``index``."""
        mlp = self.decoder_layers()[index].mlp
        return MLPProjections(gate=mlp.gate_proj, up=mlp.up_proj, down=mlp.down_proj)

    def mlps(self) -> list[MLPProjections]:
        """Every decoder layer's MLP projections."""
        return [self.mlp(i) for i in range(len(self.decoder_layers()))]

    def text_config(self) -> Any:
        """The language model's config (where ``intermediate_size`` lives)."""
        return self.model.config.text_config

    def intermediate_widths(self) -> list[int]:
        """Current MLP intermediate width of every layer."""
        return [m.gate.out_features for m in self.mlps()]

    def image_token_id(self) -> int:
        """The placeholder token id that marks vision positions in ``input_ids``."""
        cfg = self.model.config
        value = getattr(cfg, "image_token_id", None)
        if value is None:
            value = getattr(cfg, "image_token_index")
        return int(value)

    def vision_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``(B, T)`` of the positions that hold vision tokens."""
        return input_ids == self.image_token_id()

    def non_text_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``(B, T)`` of vision placeholders and the markers around them (never
        language-model targets): the image token plus any vision start/end/video ids in the config."""
        cfg = self.model.config
        ids = {self.image_token_id()} | {int(v) for k in ("vision_start_token_id", "vision_end_token_id",
                                                          "video_token_id")
                                         if (v := getattr(cfg, k, None)) is not None}
        return torch.isin(input_ids, torch.tensor(sorted(ids), device=input_ids.device))

    def text_example_inputs(self) -> dict[str, torch.Tensor]:
        """A tiny text-only input for tracing the language model's dependency graph."""
        device = next(self.language_model().parameters()).device
        return {"input_ids": torch.tensor([[1, 2, 3, 4]], device=device)}

    def non_mlp_modules(self) -> list[nn.Module]:
        """Modules a Torch-Pruning ``BasePruner`` must ignore so that only LM MLP rows are pruned
        (attention groups hang Torch-Pruning 1.6.x; the vision side and ``lm_head`` stay dense)."""
        modules: list[nn.Module] = [self.vision_module(), self.model.lm_head]
        projector = self.projector_module()
        if projector is not None:
            modules.append(projector)
        modules += [layer.self_attn for layer in self.decoder_layers()]
        return modules

    @abstractmethod
    def vision_module(self) -> nn.Module:
        """The vision tower."""

    @abstractmethod
    def projector_module(self) -> nn.Module | None:
        """The multimodal projector, when it is a separate module."""

    def encode(self, processor: Any, images: Sequence[Any], prompts: Sequence[str],
               answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Turn ``(image, prompt)`` pairs into model inputs through the processor's chat
        template, exactly as the model family is prompted; with ``answers``, each answer
        is appended after the generation prompt."""
        texts = chat_texts(processor, prompts, answers)
        batch = processor(images=list(images), text=texts, return_tensors="pt", padding=True)
        return dict(batch)
