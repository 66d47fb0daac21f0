"""What trains during recovery, LoRA on the decoder layers (peft), and merging it back without
changing any pruned width."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hipp_torchprune.adapters.base import ModelAdapter
from hipp_torchprune.recovery.config import RecoveryConfig, RecoveryError


def projector_of(adapter: ModelAdapter) -> nn.Module | None:
    """The module that writes vision features into the residual stream: LLaVA's projector,
    Qwen2.5-VL's patch merger (inside the vision tower)."""
    projector = adapter.projector_module()
    if projector is None:
        projector = getattr(adapter.vision_module(), "merger", None)
    return projector


def head_modules(adapter: ModelAdapter) -> list[nn.Module]:
    """The fully trained modules: LM head, final norm, projector."""
    modules = [adapter.model.lm_head, adapter.language_model().norm]
    projector = projector_of(adapter)
    if projector is not None:
        modules.append(projector)
    return modules


def lora_target_names(model: nn.Module, adapter: ModelAdapter, last_k: int | None) -> list[str]:
    """Qualified names of every ``nn.Linear`` (attention and MLP) in every decoder layer
    (``last_k=None``) or in the last ``last_k``."""
    layers = adapter.decoder_layers()
    last_k = len(layers) if last_k is None else last_k
    if last_k > len(layers):
        raise RecoveryError(f"lora_layers={last_k} but the model has only {len(layers)} decoder layers")
    wanted = {id(m) for layer in layers[len(layers) - last_k:] for m in layer.modules() if isinstance(m, nn.Linear)}
    return [name for name, m in model.named_modules() if id(m) in wanted]


def unique_param_count(model: nn.Module) -> int:
    """Parameters counted once (tied weights once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@dataclass(frozen=True)
class ShapeSnapshot:
    """MLP widths, hidden size and parameter count before LoRA, to check merging against."""

    widths: tuple[int, ...]
    params: int
    linear_shapes: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def of(cls, model: nn.Module, adapter: ModelAdapter) -> ShapeSnapshot:
        """Take the snapshot."""
        shapes = tuple((n, tuple(m.weight.shape)) for n, m in model.named_modules() if isinstance(m, nn.Linear))
        return cls(tuple(adapter.intermediate_widths()), unique_param_count(model), shapes)

    def check(self, model: nn.Module, adapter: ModelAdapter) -> None:
        """Raise :class:`RecoveryError` if merging changed a width, a shape or the parameter count,
        or left a LoRA module behind."""
        now = ShapeSnapshot.of(model, adapter)
        leftovers = [n for n, _ in model.named_modules() if "lora_" in n]
        if leftovers:
            raise RecoveryError(f"LoRA modules left after merging: {leftovers[:3]}")
        if now.widths != self.widths:
            raise RecoveryError(f"merging changed the MLP widths {self.widths} -> {now.widths}")
        if now.linear_shapes != self.linear_shapes or now.params != self.params:
            raise RecoveryError(f"merging densified the model: {self.params} -> {now.params} parameters")


def attach(model: nn.Module, adapter: ModelAdapter, config: RecoveryConfig) -> nn.Module:
    """Freeze everything, then make the head modules trainable and (unless ``lora_layers == 0``)
    wrap ``model`` in a peft LoRA model on the decoder layers. Returns the module to call."""
    for p in model.parameters():
        p.requires_grad_(False)
    net = model
    if config.lora_layers != 0:
        from peft import LoraConfig, get_peft_model

        targets = lora_target_names(model, adapter, config.lora_layers)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0, bias="none",
                          target_modules=targets)
        net = get_peft_model(model, lora)
    for module in head_modules(adapter):
        for p in module.parameters():
            p.requires_grad_(True)
    return net


def merge(net: nn.Module, model: nn.Module) -> nn.Module:
    """Fold LoRA into the base weights (shapes unchanged) and return the plain model."""
    if net is model:
        return model
    merged = net.merge_and_unload()
    for p in merged.parameters():
        p.requires_grad_(False)
    return merged
