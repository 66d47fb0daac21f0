"""Pruned checkpoints: save and load models whose MLP widths differ per layer.

transformers' Llama/Qwen2 configs have one ``intermediate_size`` for every layer, so a plain
``from_pretrained`` cannot load a checkpoint whose layers differ in width (it raises a size
mismatch). :func:`save_pruned` writes the usual files plus ``hipp_pruning.json``;
:func:`load_pruned` rebuilds the model from the config, resizes each MLP to its recorded width,
ties what the config ties and loads the weights strictly. A dense HF checkpoint directory loads too.

Format ``hipp-torchprune/2`` (what :func:`save_pruned` writes):

* **weights**: safetensors in the model's own dtype, under the model's own parameter names, each
  shared (tied) tensor once. Up to ``max_shard_size`` bytes they are one ``model.safetensors``;
  above it they are shards ``model-00001-of-0000N.safetensors`` plus ``model.safetensors.index.json``
  whose ``weight_map`` names each tensor's shard (transformers' layout and size convention).
* **config.json**: ``dtype`` is the dtype of the saved weights. The text config's
  ``intermediate_size`` is the widest kept MLP; when layers differ, ``hipp_intermediate_sizes``
  lists every layer's width. When all layers share one width the directory is also a plain
  transformers checkpoint.
* **hipp_pruning.json**: ``format``, ``architecture``, ``intermediate_sizes`` (per layer, the
  widths :func:`load_pruned` builds), ``plan``, ``reshaped_parameters`` and optionally ``reshape``.

Other shape changes (SliceGPT's sliced residual stream: a narrower embedding, norms, ``lm_head``
and stream-reading/-writing linears) are recorded by :func:`parameter_changes` as
``reshaped_parameters`` (name -> shape) and rebuilt by :func:`apply_reshaped`; edits that need code
(``reshape``) go through :data:`RESHAPERS`, and a reshaper's detector (:data:`RESHAPE_DETECTORS`)
records them whenever a model that needs them is saved (SliceGPT's per-block shortcuts). The config keeps the width the architecture is built
from (transformers' configs refuse a hidden size that is not a multiple of the head count).
Parameters the config does not build at all (FLAP's compensation biases on ``down_proj``) are
recorded as ``added_parameters`` and recreated by :func:`apply_added`; only a missing
``nn.Linear`` bias can be added.

Format ``hipp-torchprune/1`` (earlier releases: one ``model.safetensors``, possibly in another
dtype than ``config.json`` says, and the dense ``intermediate_size``) loads the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import save_torch_state_dict
from huggingface_hub.errors import StrictDataclassError
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig
from transformers.initialization import no_init_weights
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME
from transformers.utils.hub import convert_file_size_to_int

from hipp_torchprune.atomic import write_dir_atomic
from hipp_torchprune.errors import CheckpointError
from hipp_torchprune.registry import Registry, default_registry

#: File holding the per-layer widths and the plan.
PRUNING_FILE = "hipp_pruning.json"
#: Format tag written into :data:`PRUNING_FILE`.
FORMAT = "hipp-torchprune/2"
#: Key in :data:`PRUNING_FILE`: parameter name -> shape, where it differs from what the config builds.
RESHAPED_KEY = "reshaped_parameters"
#: Key in :data:`PRUNING_FILE`: parameter name -> shape, for parameters the config does not build.
ADDED_KEY = "added_parameters"
#: Format tags :func:`load_pruned` reads.
READABLE_FORMATS: tuple[str, ...] = ("hipp-torchprune/1", FORMAT)
#: Default largest weight file (transformers' convention: ``"5GB"`` is 5·10⁹ bytes, ``"5GiB"`` 5·2³⁰).
DEFAULT_MAX_SHARD_SIZE = "5GB"
#: Extra structural edits a checkpoint needs before its weights fit, by name: ``fn(model, payload)``.
#: ``save_pruned(..., reshape={NAME: payload})`` records them in ``hipp_pruning.json``;
#: :func:`load_pruned` applies them after the MLP widths and before tying embeddings, under transformers'
#: ``no_init_weights`` (new parameters are filled from the checkpoint). A method that changes other
#: shapes (e.g. slicing the hidden size) registers its edit with :func:`register_reshaper`.
RESHAPERS: dict[str, Callable[[nn.Module, Any], None]] = {}
#: Per reshaper name, ``detect(model)``: the payload the model needs (None: none). :func:`save_pruned`
#: records what they find, so a model whose structure a method changed saves from any path.
RESHAPE_DETECTORS: dict[str, Callable[[nn.Module], Any]] = {}

_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def register_reshaper(name: str, fn: Callable[[nn.Module, Any], None],
                      detect: Callable[[nn.Module], Any] | None = None) -> None:
    """Make ``fn(model, payload)`` available to :func:`load_pruned` under ``name`` (see :data:`RESHAPERS`),
    and ``detect(model)`` (the payload a model needs, or None) to :func:`save_pruned`.

    A plugin registers its reshapers when its methods are loaded: :func:`load_pruned` loads the
    registry's methods before it gives up on an unknown reshaper name.
    """
    RESHAPERS[name] = fn
    if detect is not None:
        RESHAPE_DETECTORS[name] = detect


def detected_reshapes(model: nn.Module) -> dict[str, Any]:
    """The payload of every registered reshaper whose detector says ``model`` needs it."""
    found = {name: detect(model) for name, detect in RESHAPE_DETECTORS.items()}
    return {name: payload for name, payload in found.items() if payload is not None}


def save_pruned(model: nn.Module, directory: str | Path, processor: Any = None,
                plan: dict[str, Any] | None = None, registry: Registry | None = None,
                extra_files: dict[str, str] | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                reshape: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (dense or pruned), its processor and its widths to ``directory``.

    Weights keep the model's dtype and are sharded above ``max_shard_size`` (bytes, or a string such
    as ``"5GB"``/``"500MiB"``). The directory appears whole or not at all (it is filled as a
    temporary sibling and renamed into place, with ordinary permissions); an existing one is
    replaced. ``extra_files`` maps file names to text written beside the weights (e.g. ``plan.json``);
    ``reshape`` records edits for :data:`RESHAPERS`, in addition to those the registered
    detectors find (:data:`RESHAPE_DETECTORS`).
    """
    from hipp_torchprune.api import get_adapter

    reshape = {**detected_reshapes(model), **(reshape or {})}
    adapter = get_adapter(model, registry)
    widths = adapter.intermediate_widths()
    shard_bytes = _shard_bytes(max_shard_size)
    meta = {"format": FORMAT, "architecture": type(model).__name__, "intermediate_sizes": widths,
            "plan": plan or {}, **({"reshape": reshape} if reshape else {})}

    def write(tmp: Path) -> None:
        state = model.state_dict()
        save_torch_state_dict(state, tmp, max_shard_size=shard_bytes, metadata={"format": "pt"},
                              shared_tensors_to_discard=[n for names in _parameter_names(model) for n in names[1:]])
        dtype = dominant_dtype((t.dtype, t.numel() * t.element_size()) for t in state.values())
        with _config_as_saved(model, adapter.text_config(), widths, dtype):
            model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        meta[RESHAPED_KEY], meta[ADDED_KEY] = parameter_changes(model, tmp, widths, registry, reshape)
        (tmp / PRUNING_FILE).write_text(json.dumps(meta, indent=2))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)

    return write_dir_atomic(directory, write)


def _shard_bytes(max_shard_size: int | str) -> int:
    try:
        size = convert_file_size_to_int(max_shard_size)
    except (ValueError, AttributeError) as exc:
        raise CheckpointError(f"max_shard_size={max_shard_size!r} is not a size (give bytes or e.g. '5GB', "
                              "'500MiB')") from exc
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise CheckpointError(f"max_shard_size must be a positive size, got {max_shard_size!r}")
    return size


_ABSENT = object()


@contextmanager
def _attributes(obj: Any, values: dict[str, Any]) -> Iterator[None]:
    """Set attributes of ``obj`` (``_ABSENT`` removes one) and restore them afterwards."""
    saved = {name: getattr(obj, name, _ABSENT) for name in values}

    def assign(items: Iterable[tuple[str, Any]]) -> None:
        for name, value in items:
            if value is not _ABSENT:
                setattr(obj, name, value)
            elif hasattr(obj, name):
                delattr(obj, name)

    assign(values.items())
    try:
        yield
    finally:
        assign(saved.items())


@contextmanager
def _config_as_saved(model: nn.Module, text: Any, widths: list[int], dtype: torch.dtype | None) -> Iterator[None]:
    """``model.config`` telling the truth while it is written: the model's class, the weights'
    dtype (on sub-configs that record one too), the widest MLP as ``intermediate_size`` and,
    when layers differ, every layer's width as ``hipp_intermediate_sizes``."""
    config = model.config
    with ExitStack() as stack:
        stack.enter_context(_attributes(config, {"architectures": [type(model).__name__]}))
        if dtype is not None:
            stack.enter_context(_attributes(config, {"dtype": dtype}))
            for key in getattr(config, "sub_configs", {}):
                sub = getattr(config, key, None)
                if getattr(sub, "dtype", None) is not None:
                    stack.enter_context(_attributes(sub, {"dtype": dtype}))
        if widths and hasattr(text, "intermediate_size"):
            stack.enter_context(_attributes(text, {
                "intermediate_size": max(widths),
                "hipp_intermediate_sizes": list(widths) if len(set(widths)) > 1 else _ABSENT}))
        yield


def dominant_dtype(sizes: Iterable[tuple[torch.dtype, int]]) -> torch.dtype | None:
    """The floating dtype holding the most bytes among ``(dtype, nbytes)`` pairs (``None``: none)."""
    totals: dict[torch.dtype, int] = {}
    for dtype, nbytes in sizes:
        if dtype.is_floating_point:
            totals[dtype] = totals.get(dtype, 0) + nbytes
    return max(totals, key=lambda d: totals[d]) if totals else None


def read_pruning_meta(directory: str | Path) -> dict[str, Any] | None:
    """The contents of ``hipp_pruning.json``, or ``None`` for a dense HF checkpoint."""
    path = Path(directory) / PRUNING_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise CheckpointError(f"{path} has format {meta.get('format') if isinstance(meta, dict) else None!r}; "
                              f"this version reads {', '.join(READABLE_FORMATS)}")
    return meta


def _model_class(config: Any, directory: Path) -> type[nn.Module]:
    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise CheckpointError(f"{directory}/config.json names no known architecture ({names})")


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, or ``model.safetensors``."""
    directory = Path(directory)
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.exists():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{index} is not a weight index (JSON with a 'weight_map')") from exc
        bad = [n for n in names if not isinstance(n, str) or Path(n).name != n or not n.endswith(".safetensors")]
        if bad:
            raise CheckpointError(f"{index} names shards outside the directory or not safetensors: {bad[:3]}")
        missing = [n for n in names if not (directory / n).is_file()]
        if missing:
            raise CheckpointError(f"{directory} lacks shard(s) {missing[:3]} named in {index.name}")
        return [directory / n for n in names]
    if (directory / SAFE_WEIGHTS_NAME).is_file():
        return [directory / SAFE_WEIGHTS_NAME]
    raise CheckpointError(f"{directory} has no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}")


def _stored_sizes(files: list[Path]) -> Iterator[tuple[torch.dtype, int]]:
    """``(dtype, nbytes)`` of every floating tensor in ``files``, read from their headers."""
    for path in files:
        with safe_open(path, "pt") as fh:
            for name in fh.keys():
                part = fh.get_slice(name)
                dtype = _SAFETENSORS_DTYPES.get(part.get_dtype())
                if dtype is not None:
                    numel = 1
                    for n in part.get_shape():
                        numel *= int(n)
                    yield dtype, numel * dtype.itemsize


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
            setattr(mlp, attr, nn.Linear(fin, fout, bias=old.bias is not None, dtype=old.weight.dtype,
                                         device=old.weight.device))
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = width
    adapter.text_config().hipp_intermediate_sizes = list(widths)


def parameter_changes(model: nn.Module, config_dir: Path, widths: list[int], registry: Registry | None = None,
                      reshape: dict[str, Any] | None = None) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """``(reshaped, added)``: parameters of ``model`` whose shapes differ from the model that
    ``config_dir/config.json`` builds with MLP ``widths`` (empty unless something besides MLP rows
    was pruned, e.g. SliceGPT), and parameters that model does not have (e.g. FLAP's biases).
    Parameters that the registered reshapers in ``reshape`` create are in neither (they are
    rebuilt by their reshaper) and must have the model's shapes.

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
        for name, payload in (reshape or {}).items():
            if name in RESHAPERS:
                RESHAPERS[name](built, payload)
    made = {name: list(p.shape) for name, p in built.named_parameters() if name not in expected}
    actual = {name: list(p.shape) for name, p in model.named_parameters()}
    wrong = [name for name, shape in made.items() if actual.get(name) != shape]
    if wrong:
        raise CheckpointError(f"reshapers {sorted(reshape or {})} build {wrong[:3]} in other shapes than the model's")
    return ({name: shape for name, shape in actual.items() if name in expected and expected[name] != shape},
            {name: shape for name, shape in actual.items() if name not in expected and name not in made})


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


def _apply_reshapers(model: nn.Module, reshape: dict[str, Any], directory: Path, registry: Registry | None) -> None:
    if set(reshape) - set(RESHAPERS):  # plugins register their reshapers when their methods load
        (registry or default_registry()).all("method")
    unknown = sorted(set(reshape) - set(RESHAPERS))
    if unknown:
        raise CheckpointError(f"{directory} needs reshaper(s) {', '.join(unknown)} that are not registered "
                              "(import the plugin that wrote it)")
    for name, payload in reshape.items():
        RESHAPERS[name](model, payload)


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


def load_pruned(directory: str | Path, registry: Registry | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Load a checkpoint written by :func:`save_pruned`, or a dense HF checkpoint, in eval mode.

    ``dtype=None`` keeps the dtype each tensor was saved in (so the saved model's logits come back
    exactly); a dtype converts the weights. Buffers computed at construction (rotary ``inv_freq``)
    stay in the precision the model computes them in. Raises :class:`CheckpointError` when the
    directory holds no model, or when its weights do not match its recorded widths.
    """
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise CheckpointError(f"{directory} is not a model checkpoint (no config.json)")
    config = AutoConfig.from_pretrained(directory)
    cls = _model_class(config, directory)
    meta = read_pruning_meta(directory)
    if meta is None:
        return cls.from_pretrained(directory, dtype=dtype or "auto").eval()
    files = weight_files(directory)
    with no_init_weights():  # every parameter is filled from the files below; random init is wasted time
        model = cls._from_config(config, dtype=dtype or dominant_dtype(_stored_sizes(files)) or torch.float32)
        _resize_mlps(model, [int(w) for w in meta["intermediate_sizes"]], registry)
        apply_reshaped(model, meta.get(RESHAPED_KEY) or {}, directory)
        apply_added(model, meta.get(ADDED_KEY) or {}, directory)
        _apply_reshapers(model, meta.get("reshape") or {}, directory, registry)
    model.tie_weights()  # what the config ties (e.g. Qwen2.5-VL-3B's lm_head and embed_tokens)
    _load_weights(model, files, directory, dtype)
    return model.eval()


def _load_weights(model: nn.Module, files: list[Path], directory: Path, dtype: torch.dtype | None) -> None:
    """Put every stored tensor into ``model`` (in ``dtype``, or as stored); refuse missing, unexpected
    or misshapen tensors. A tied tensor is stored under one of its names."""
    targets = model.state_dict(keep_vars=True)
    aliases = {n: set(names) for names in _parameter_names(model) for n in names}
    loaded: set[str] = set()
    unexpected: list[str] = []
    for path in files:
        with safe_open(path, "pt") as fh:
            for name in fh.keys():
                target = targets.get(name)
                if target is None:
                    unexpected.append(name)
                    continue
                tensor = fh.get_tensor(name)
                if tensor.shape != target.shape:
                    raise CheckpointError(f"weights in {directory} do not match its widths: {name} is "
                                          f"{tuple(tensor.shape)} on disk, {tuple(target.shape)} in the model")
                want = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                target.data = tensor.to(device=target.device, dtype=want)
                loaded.add(name)
    missing = sorted(n for n in targets if n not in loaded and not aliases.get(n, set()) & loaded)
    if unexpected or missing:
        raise CheckpointError(f"weights in {directory} do not match the model: missing {missing[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}")


def _parameter_names(model: nn.Module) -> list[list[str]]:
    """Every parameter's names in module order; a tied parameter (shared embeddings) has several."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return list(names.values())
