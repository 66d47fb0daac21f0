"""Pruned checkpoints: save and load models whose MLP widths differ per layer.

transformers' Llama/Qwen2 configs have one ``intermediate_size`` for every layer, so a plain
``from_pretrained`` cannot load a pruned checkpoint (it raises a size mismatch).
:func:`save_pruned` writes the usual files (safetensors weights, ``config.json``, processor)
plus ``hipp_pruning.json`` with the per-layer widths and the plan; :func:`load_pruned` rebuilds
the model from the config, resizes each MLP to its recorded width and loads the weights
strictly. A dense HF checkpoint directory loads too.

Other shape changes (SliceGPT's sliced residual stream: a narrower embedding, norms, ``lm_head``
and stream-reading/-writing linears) are recorded by :func:`parameter_changes` as
``reshaped_parameters`` in :data:`PRUNING_FILE` and rebuilt by :func:`apply_reshaped`. The
config keeps the width the architecture is built from (transformers' configs refuse a hidden
size that is not a multiple of the head count). Parameters the config does not build at all
(FLAP's compensation biases on ``down_proj``) are recorded as ``added_parameters`` and recreated
by :func:`apply_added`; only a missing ``nn.Linear`` bias can be added.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_model
from torch import nn
from transformers import AutoConfig
from transformers.initialization import no_init_weights

from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.registry import Registry

#: File holding the per-layer widths and the plan.
PRUNING_FILE = "hipp_pruning.json"
#: Format tag written into :data:`PRUNING_FILE`.
FORMAT = "hipp-torchprune/1"
#: Key in :data:`PRUNING_FILE`: parameter name -> shape, where it differs from what the config builds.
RESHAPED_KEY = "reshaped_parameters"
#: Key in :data:`PRUNING_FILE`: parameter name -> shape, for parameters the config does not build.
ADDED_KEY = "added_parameters"


def save_pruned(model: nn.Module, directory: str | Path, processor: Any = None,
                plan: dict[str, Any] | None = None, registry: Registry | None = None,
                extra_files: dict[str, str] | None = None) -> Path:
    """Write ``model`` (dense or pruned), its processor and its widths to ``directory``.

    The directory appears whole or not at all: everything is written to a temporary sibling
    that is renamed into place. An existing directory is replaced. ``extra_files`` maps file
    names to text written beside the weights (e.g. ``plan.json``).
    """
    from hipp_torchprune.api import get_adapter

    directory = Path(directory)
    adapter = get_adapter(model, registry)
    widths = adapter.intermediate_widths()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        # Our own key names: transformers 5 ``save_pretrained`` renames keys to the legacy layout.
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.architectures = [type(model).__name__]
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        reshaped, added = parameter_changes(model, tmp, widths, registry)
        meta = {"format": FORMAT, "architecture": type(model).__name__, "intermediate_sizes": widths,
                "plan": plan or {}, RESHAPED_KEY: reshaped, ADDED_KEY: added}
        (tmp / PRUNING_FILE).write_text(json.dumps(meta, indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _swap_in(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _swap_in(new: Path, directory: Path) -> None:
    """Move ``new`` to ``directory``; an existing ``directory`` is set aside first and deleted
    only once the new one is in place (a crash leaves the old or the new, never neither)."""
    old = None
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        os.replace(directory, old / directory.name)
    try:
        os.replace(new, directory)
    except BaseException:
        if old is not None:
            os.replace(old / directory.name, directory)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_pruning_meta(directory: str | Path) -> dict[str, Any] | None:
    """The contents of ``hipp_pruning.json``, or ``None`` for a dense HF checkpoint."""
    path = Path(directory) / PRUNING_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def _model_class(config: Any, directory: Path) -> type[nn.Module]:
    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise CheckpointError(f"{directory}/config.json names no known architecture ({names})")


def _state_dict(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    return state


def _resize_mlps(model: nn.Module, widths: list[int], registry: Registry | None) -> None:
    from hipp_torchprune.api import get_adapter

    adapter = get_adapter(model, registry)
    if len(widths) != len(adapter.decoder_layers()):
        raise CheckpointError(f"checkpoint lists {len(widths)} MLP widths for {len(adapter.decoder_layers())} layers")
    for layer, width in zip(adapter.decoder_layers(), widths):
        mlp = layer.mlp
        for attr, (fin, fout) in (("gate_proj", (mlp.gate_proj.in_features, width)),
                                  ("up_proj", (mlp.up_proj.in_features, width)),
                                  ("down_proj", (width, mlp.down_proj.out_features))):
            old = getattr(mlp, attr)
            setattr(mlp, attr, nn.Linear(fin, fout, bias=old.bias is not None, dtype=old.weight.dtype))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    adapter.text_config().hipp_intermediate_sizes = list(widths)


def parameter_changes(model: nn.Module, config_dir: Path, widths: list[int], registry: Registry | None = None
                      ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(reshaped, added)``: parameters of ``model`` whose shapes differ from the model that
    ``config_dir/config.json`` builds with MLP ``widths`` (empty unless something besides MLP rows
    was pruned, e.g. SliceGPT), and parameters that model does not have (e.g. FLAP's biases).

    The comparison model is built from the written config exactly as :func:`load_pruned` will,
    on the meta device (no memory). A config that transformers cannot read back raises
    :class:`CheckpointError`, so no unloadable checkpoint is written.
    """
    try:
        config = AutoConfig.from_pretrained(config_dir)
    except (StrictDataclassError, ValueError, OSError) as exc:
        raise CheckpointError(f"the model's config cannot be read back by transformers: {exc}") from exc
    with torch.device("meta"), no_init_weights():
        built = _model_class(config, config_dir)._from_config(config)
        _resize_mlps(built, widths, registry)
    expected = {name: list(p.shape) for name, p in built.named_parameters()}
    actual = {name: list(p.shape) for name, p in model.named_parameters()}
    return ({name: shape for name, shape in actual.items() if name in expected and expected[name] != shape},
            {name: shape for name, shape in actual.items() if name not in expected})


def apply_reshaped(model: nn.Module, shapes: dict[str, list[int]], directory: Path) -> None:
    """Give each named parameter its recorded shape (uninitialized; the weights are loaded next).

    ``nn.Linear``/``nn.Embedding`` size attributes follow their weights.
    """
    params = dict(model.named_parameters())
    for name, shape in shapes.items():
        if name not in params:
            raise CheckpointError(f"{directory}/{PRUNING_FILE} reshapes {name!r}, which the model does not have")
        owner, _, attr = name.rpartition(".")
        module, old = model.get_submodule(owner), params[name]
        setattr(module, attr, nn.Parameter(torch.empty([int(n) for n in shape], dtype=old.dtype, device=old.device),
                                           requires_grad=old.requires_grad))
        if isinstance(module, nn.Linear) and attr == "weight":
            module.out_features, module.in_features = module.weight.shape
        elif isinstance(module, nn.Embedding) and attr == "weight":
            module.num_embeddings, module.embedding_dim = module.weight.shape


def apply_added(model: nn.Module, shapes: dict[str, list[int]], directory: Path) -> None:
    """Create each recorded added parameter (uninitialized; the weights are loaded next): a bias
    on an ``nn.Linear`` that has none, of its ``out_features``. Anything else raises
    :class:`CheckpointError`."""
    for name, shape in shapes.items():
        owner, _, attr = name.rpartition(".")
        try:
            module = model.get_submodule(owner)
        except AttributeError:
            module = None
        if not (isinstance(module, nn.Linear) and attr == "bias" and module.bias is None
                and [int(n) for n in shape] == [module.out_features]):
            raise CheckpointError(f"{directory}/{PRUNING_FILE} adds {name!r} {shape}; only a missing nn.Linear "
                                  "bias of its output width can be added")
        weight = module.weight
        module.bias = nn.Parameter(torch.empty(module.out_features, dtype=weight.dtype, device=weight.device),
                                   requires_grad=weight.requires_grad)


def load_pruned(directory: str | Path, registry: Registry | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save_pruned`, or a dense HF checkpoint, in eval mode.

    Raises :class:`CheckpointError` when the directory holds no model, or when its weights do
    not match its recorded widths.
    """
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} is not a model checkpoint (no config.json)")
    config = AutoConfig.from_pretrained(directory)
    cls = _model_class(config, directory)
    meta = read_pruning_meta(directory)
    if meta is None:
        return cls.from_pretrained(directory).eval()
    state = _state_dict(directory)
    with no_init_weights():
        model = cls._from_config(config)
    _resize_mlps(model, [int(w) for w in meta["intermediate_sizes"]], registry)
    apply_reshaped(model, meta.get(RESHAPED_KEY) or {}, directory)
    apply_added(model, meta.get(ADDED_KEY) or {}, directory)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    if dtype is not None:
        model.to(dtype)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"weights in {directory} do not match its widths: {exc}") from exc
    tied = {name for name, _ in _tied_names(model)}
    if unexpected or set(missing) - tied:
        raise CheckpointError(f"weights in {directory} do not match the model: missing {sorted(set(missing) - tied)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model.eval()


def _tied_names(model: nn.Module) -> list[tuple[str, str]]:
    """Names of parameters that share storage with an earlier parameter (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.append((name, seen[id(p)]))
        else:
            seen[id(p)] = name
    return tied
