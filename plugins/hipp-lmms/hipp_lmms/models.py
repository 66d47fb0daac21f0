"""``hipp_vlm``: an lmms-eval model wrapper for dense and pruned hipp-torchprune VLMs.

Registered through the ``lmms_eval.models`` entry-point group
(:func:`hipp_lmms.registration.model_manifests`), so
``lmms-eval eval --model hipp_vlm --model_args pretrained=DIR`` finds it by name; the old
``@register_model`` decorator alone is ignored by lmms-eval 0.7's name lookup.

* ``pretrained`` takes what ``hipp prune --model`` takes: a checkpoint directory (dense HF or
  pruned, loaded with :func:`hipp_torchprune.checkpoint.load_pruned`), ``demo``, or a tiny
  config name. ``HippVLM(model=..., processor=...)`` wraps a model already in memory.
* :meth:`HippVLM.loglikelihood` is batched and returns real log-probabilities (not losses).
  Answers the hipp tasks ask for (" Yes", " No", option letters) are scored as in ``hipp eval``:
  the log of the probability mass of the answer's first-token variants at the answer position
  (:func:`hipp_lmms.utils.answer_variants`, :func:`hipp_torchprune.evaluation.answer_token_ids`).
  Other continuations get the exact teacher-forced log-likelihood. ``answer_pooling=false``
  turns pooling off.
* :meth:`HippVLM.generate_until` batches only requests with equal generation settings
  (:mod:`hipp_lmms.generation`: ``until``, ``max_new_tokens``, ``do_sample``, ``temperature``,
  ``top_p``, ``num_beams``), so greedy outputs do not depend on the batch size.
* Token counts: every generation returns lmms-eval's ``GenerationResult`` with per-request
  ``TokenCounts`` (in the ``--log_samples`` output), every model call is logged with lmms-eval's
  ``log_usage`` (the ``usage`` block of the results file), and :attr:`HippVLM.token_counts` /
  :attr:`HippVLM.token_totals` keep them on the wrapper.
* ``device=`` is checked up front (:func:`resolve_device`); ``batch_size=`` in ``--model_args``
  wins over lmms-eval's ``--batch_size`` (:meth:`HippVLM.create_from_arg_string`).
* :meth:`HippVLM.clean` is overridden: the base class deletes every ``nn.Module`` attribute
  after each ``evaluate()``, which would make a wrapper unusable for a second evaluation.
"""

from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from lmms_eval.models.model_utils.usage_metrics import log_usage

from hipp_lmms.generation import (
    GenerationSettings,
    TokenCount,
    cut_at_stop,
    generated_lengths,
    generation_settings,
    parse_bool,
)
from hipp_lmms.utils import answer_variants
from hipp_torchprune.errors import CheckpointError, HippError
from hipp_torchprune.evaluation import answer_token_ids, last_position_logprobs, logsumexp, with_position_ids
from hipp_torchprune.pruning.compute import float32_linears
from hipp_torchprune.threads import torch_threads

#: Default examples per forward pass (``hipp eval``'s default, so batches are identical).
DEFAULT_BATCH_SIZE = 64


class ModelArgsError(HippError, ValueError):
    """A ``--model_args`` value of ``hipp_vlm`` is unknown or malformed."""


class DeviceError(ModelArgsError):
    """``device=`` names a device this machine does not have; the message lists the ones it has."""


#: The ``--model_args`` keys ``hipp_vlm`` accepts.
MODEL_ARGS: tuple[str, ...] = ("pretrained", "device", "dtype", "batch_size", "max_batch_size", "answer_pooling",
                               "max_new_tokens", "threads")


R = TypeVar("R")


def _request_scope(method: Callable[[Any, list[Instance]], R]) -> Callable[[Any, list[Instance]], R]:
    """Run a request method with the wrapper's torch thread count (the caller's is put back
    afterwards) and, for a 16-bit model on the CPU, float32 linears as ``hipp eval`` computes."""
    @functools.wraps(method)
    def wrapper(self: Any, requests: list[Instance]) -> R:
        with torch_threads(self._threads), float32_linears(self._model):
            return method(self, requests)
    return wrapper


def _positive_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise ModelArgsError(f"hipp_vlm: {name} {value!r} is not an integer") from exc
    if number < 1:
        raise ModelArgsError(f"hipp_vlm: {name} must be >= 1, got {number}")
    return number


def _as_batch_size(value: Any, max_batch_size: Any = None) -> int:
    if value is None or str(value).startswith("auto"):
        cap = DEFAULT_BATCH_SIZE if max_batch_size is None else _positive_int(max_batch_size, "max batch size")
        return min(DEFAULT_BATCH_SIZE, cap)
    return _positive_int(value, "batch size")


def available_devices() -> list[str]:
    """The devices this machine can run on: ``cpu``, then ``cuda`` and ``cuda:N`` per GPU, then ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | None) -> str:
    """``device`` checked against :func:`available_devices`; None means cuda when available, else cpu.

    Raises :class:`DeviceError` for a name torch does not know (``gpu``) or a device this
    machine lacks (``cuda`` without a GPU); there is no silent fallback.
    """
    if device is None or not str(device).strip():
        return "cuda" if torch.cuda.is_available() else "cpu"
    name, have = str(device).strip(), available_devices()
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise DeviceError(f"hipp_vlm: device={name!r} is not a torch device; this machine has: "
                          f"{', '.join(have)}") from exc
    if parsed.type == "cpu":
        return "cpu"
    if str(parsed) not in have:
        why = ""
        if parsed.type == "cuda" and not torch.cuda.is_available():
            why = (f" (torch {torch.__version__} is a CPU-only build)" if torch.version.cuda is None
                   else " (torch finds no CUDA GPU)")
        raise DeviceError(f"hipp_vlm: device={name!r} is not available{why}; this machine has: {', '.join(have)}")
    return str(parsed)


def load_for_eval(pretrained: str, device: str, dtype: str | None) -> tuple[Any, Any]:
    """Load ``pretrained`` (checkpoint dir, ``demo`` or tiny name) as ``(model, processor)`` in eval mode.

    ``dtype`` (``auto``, ``bfloat16``, ``float16``, ``float32``, ``float64``) defaults to the
    checkpoint's own, on every device, as every ``hipp`` command does; the conversion leaves
    buffers computed in float32 (rotary ``inv_freq``) in float32. A bad value raises
    :class:`~hipp_torchprune.loading.DtypeError`.
    """
    from hipp_torchprune.loading import load_model

    if not str(pretrained).strip():
        raise CheckpointError("hipp_vlm: pretrained= is empty; give a checkpoint directory or 'demo'")
    model, processor = load_model(str(pretrained).strip(), dtype=dtype or None)
    return model.to(device).eval(), processor


class HippVLM(lmms):
    """lmms-eval wrapper around a (possibly pruned) LLaVA / Qwen2.5-VL model.

    Args:
        pretrained: checkpoint directory, ``demo`` or a tiny config name (ignored when ``model``
            is given).
        model: a model already in memory (then ``processor`` is required).
        processor: the model's processor.
        device: ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` (default: cuda when available); a device
            this machine lacks raises :class:`DeviceError`. An in-memory model is moved there.
        dtype: ``float32`` / ``bfloat16`` / ``float16`` (default: float32 on CPU, bfloat16 on GPU).
        batch_size: contexts per forward pass (``auto`` = 64, capped by ``max_batch_size``).
        max_batch_size: the cap for ``batch_size=auto``.
        answer_pooling: score known answers as ``hipp eval`` does (see the module docstring).
        max_new_tokens: generation length for requests whose ``generation_kwargs`` give none.
        threads: torch CPU threads while this wrapper answers requests, when given (the caller's
            count is put back after each call).
    """

    is_simple = True

    def __init__(self, pretrained: str = "demo", model: Any = None, processor: Any = None,
                 device: str | None = None, dtype: str | None = None, batch_size: Any = DEFAULT_BATCH_SIZE,
                 answer_pooling: Any = True, max_new_tokens: Any = 32, threads: Any = None,
                 max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ModelArgsError(f"hipp_vlm: unknown model argument(s) {', '.join(sorted(unknown))}; valid: "
                                 + ", ".join(MODEL_ARGS))
        self._threads = _positive_int(threads, "threads") if threads else None  # set per request
        self.batch_size_per_gpu = _as_batch_size(batch_size, max_batch_size)
        self.answer_pooling = parse_bool(answer_pooling, "hipp_vlm: answer_pooling", ModelArgsError)
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        target = resolve_device(device)
        if model is not None:
            if processor is None:
                raise ModelArgsError("hipp_vlm: wrapping an in-memory model needs its processor too")
            model = model.to(target) if device is not None else model
            self._model, self._processor = model.eval(), processor
        else:
            self._model, self._processor = load_for_eval(pretrained, target, dtype)
        self._templates: dict[int, str] = {}
        self._variant_ids: dict[tuple[str, ...], list[int]] = {}
        self.token_counts: list[TokenCount] = []

    @classmethod
    def create_from_arg_string(cls, arg_string: str | Mapping[str, Any],
                               additional_config: dict[str, Any] | None = None) -> HippVLM:
        """Build from ``--model_args`` plus lmms-eval's own ``--batch_size`` / ``--device``.

        lmms-eval always passes its ``--batch_size`` (default 1) in ``additional_config``; a
        ``batch_size`` (or ``max_batch_size``) in the model arguments wins over it. A ``device`` in
        both places must name the same device (:class:`ModelArgsError` otherwise).
        """
        from lmms_eval.utils import simple_parse_args_string

        args = dict(arg_string) if isinstance(arg_string, Mapping) else simple_parse_args_string(arg_string or "")
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "device" in args and "device" in extra and \
                resolve_device(str(args["device"])) != resolve_device(str(extra["device"])):
            raise ModelArgsError(f"hipp_vlm: device={args['device']!r} in --model_args conflicts with "
                                 f"--device {extra['device']!r}; give one")
        return cls(**{**extra, **args})

    # ------------------------------------------------------------ properties

    @property
    def model(self) -> Any:
        """The wrapped model."""
        return self._model

    @property
    def processor(self) -> Any:
        """The wrapped model's processor."""
        return self._processor

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self._processor.tokenizer

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(self._model.parameters()).device

    @property
    def token_totals(self) -> dict[str, int]:
        """Sums over :attr:`token_counts`: ``calls``, ``input_tokens``, ``output_tokens``."""
        return {"calls": len(self.token_counts),
                "input_tokens": sum(c.input_tokens for c in self.token_counts),
                "output_tokens": sum(c.output_tokens for c in self.token_counts)}

    def _record(self, task: str, doc_id: int, request_type: str, input_tokens: int, output_tokens: int) -> None:
        """Keep one model call's token counts and log them with lmms-eval's ``log_usage``."""
        self.token_counts.append(TokenCount(task, int(doc_id), request_type, int(input_tokens), int(output_tokens)))
        log_usage(model_name="hipp_vlm", task_name=task, input_tokens=int(input_tokens),
                  output_tokens=int(output_tokens))

    def clean(self) -> None:
        """Keep the model: the base class would delete every ``nn.Module`` attribute."""
        gc.collect()

    # ------------------------------------------------------------ inputs

    def prompt_text(self, prompt: str, n_images: int) -> str:
        """The chat-formatted prompt with ``n_images`` image slots (as ``hipp eval`` builds it)."""
        if n_images not in self._templates:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": "\x00"}]
            messages = [{"role": "user", "content": content}]
            self._templates[n_images] = self._processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False)
        return self._templates[n_images].replace("\x00", prompt)

    def encode(self, prompts: Sequence[str], visuals: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """Left-padded processor outputs for one batch of prompts and their images."""
        texts = [self.prompt_text(p, len(v)) for p, v in zip(prompts, visuals)]
        images = [img for v in visuals for img in v]
        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = self._processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = old_side
        return dict(enc)

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch``'s tensors on the model's device (pixel values also in the model's dtype)."""
        return {k: (v.to(self.device, self._model.dtype) if k == "pixel_values" else v.to(self.device))
                for k, v in batch.items() if hasattr(v, "to")}

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id])
        return [v for v in (visuals or []) if v is not None]

    def _variant_token_ids(self, variants: tuple[str, ...]) -> list[int]:
        if variants not in self._variant_ids:
            self._variant_ids[variants] = answer_token_ids(self.tokenizer, variants)
        return self._variant_ids[variants]

    # ------------------------------------------------------------ loglikelihood

    @_request_scope
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Batched ``(log p(continuation | context, images), is_greedy)`` per request."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        exact: list[int] = []
        for i, req in enumerate(requests):
            context, continuation = req.args[0], self._continuation(req)
            if self.answer_pooling and answer_variants(continuation) is not None:
                groups.setdefault((req.args[4], req.args[5], req.args[3], context), []).append(i)
            else:
                exact.append(i)
        self._score_pooled(requests, groups, results)
        for s in range(0, len(exact), self.batch_size_per_gpu):
            self._score_exact(requests, exact[s:s + self.batch_size_per_gpu], results)
        return [r if r is not None else (float("-inf"), False) for r in results]

    def _continuation(self, req: Instance) -> str:
        target = req.args[1]
        if isinstance(target, str):
            return target
        context, _, _, doc_id, task, split = req.args
        return str(target(self.task_dict[task][split][doc_id]))

    def _score_pooled(self, requests: list[Instance], groups: dict[tuple[Any, ...], list[int]],
                      results: list[Any]) -> None:
        keys = list(groups)
        for s in range(0, len(keys), self.batch_size_per_gpu):
            chunk = keys[s:s + self.batch_size_per_gpu]
            visuals = [self._visuals(requests[groups[k][0]].args[2], k[2], k[0], k[1]) for k in chunk]
            batch = self.encode([k[3] for k in chunk], visuals)
            with torch.inference_mode():
                logprobs = last_position_logprobs(self._model, batch).cpu()
            for key, row, n_in in zip(chunk, logprobs, batch["attention_mask"].sum(dim=1).tolist()):
                self._record(key[0], key[2], "loglikelihood", n_in, 0)
                idx = groups[key]
                ids = [self._variant_token_ids(answer_variants(self._continuation(requests[i]))) for i in idx]
                flat = sorted({t for c in ids for t in c})
                vals = dict(zip(flat, row[flat].tolist()))
                best = int(row.argmax())
                for i, c in zip(idx, ids):
                    results[i] = (logsumexp([vals[t] for t in c]), best in c)

    def _score_exact(self, requests: list[Instance], idx: list[int], results: list[Any]) -> None:
        reqs = [requests[i] for i in idx]
        visuals = [self._visuals(r.args[2], r.args[3], r.args[4], r.args[5]) for r in reqs]
        batch = self.encode([r.args[0] for r in reqs], visuals)
        conts = [self.tokenizer.encode(self._continuation(r), add_special_tokens=False) for r in reqs]
        width = max(1, max(len(c) for c in conts))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        cont_ids = torch.tensor([c + [pad] * (width - len(c)) for c in conts], dtype=batch["input_ids"].dtype)
        cont_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in conts],
                                 dtype=batch["attention_mask"].dtype)
        batch["input_ids"] = torch.cat([batch["input_ids"], cont_ids], dim=1)
        batch["attention_mask"] = torch.cat([batch["attention_mask"], cont_mask], dim=1)
        for key in ("token_type_ids", "mm_token_type_ids"):
            if key in batch:
                batch[key] = torch.cat([batch[key], torch.zeros_like(cont_ids)], dim=1)
        with torch.inference_mode():
            inputs = with_position_ids(self._model, self._on_device(batch))
            logits = self._model(**inputs, use_cache=False, logits_to_keep=width + 1).logits
            logprobs = torch.log_softmax(logits[:, :width].float(), dim=-1).cpu()
        for r, n_in in zip(reqs, batch["attention_mask"].sum(dim=1).tolist()):
            self._record(r.args[4], r.args[3], "loglikelihood", n_in, 0)
        for i, c, lp in zip(idx, conts, logprobs):
            if not c:
                results[i] = (0.0, True)
                continue
            target = torch.tensor(c)
            picked = lp[torch.arange(len(c)), target]
            results[i] = (float(picked.sum()), bool((lp[: len(c)].argmax(-1) == target).all()))

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Not supported (no task of this plugin needs it)."""
        raise HippError("hipp_vlm does not support loglikelihood_rolling")

    # ------------------------------------------------------------ generation

    @_request_scope
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Generated text per request, cut at its first ``until`` string, with its token counts.

        Requests are grouped by their :class:`~hipp_lmms.generation.GenerationSettings` (every
        request's kwargs are checked before anything runs) and batched within a group only, so
        each request is decoded with its own settings whatever the batch size.
        """
        groups: dict[GenerationSettings, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(generation_settings(req.args[1], self.max_new_tokens), []).append(i)
        results: list[Any] = [None] * len(requests)
        start, generated = time.perf_counter(), 0
        for settings, idx in groups.items():
            for s in range(0, len(idx), self.batch_size_per_gpu):
                chunk = idx[s:s + self.batch_size_per_gpu]
                for i, res in zip(chunk, self._generate_batch([requests[i] for i in chunk], settings)):
                    results[i] = res
                    generated += res.token_counts.output_tokens
        if requests:
            elapsed = time.perf_counter() - start
            log_metrics(total_elapsed_time=elapsed, total_gen_tokens=generated,
                        avg_speed=generated / elapsed if elapsed > 0 else 0.0)
        return results

    def _stop_token_ids(self) -> set[int]:
        eos = getattr(getattr(self._model, "generation_config", None), "eos_token_id", None)
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        ids.add(self.tokenizer.eos_token_id)
        return {int(t) for t in ids if t is not None}

    def _generate_batch(self, reqs: Sequence[Instance], settings: GenerationSettings) -> list[GenerationResult]:
        visuals = [self._visuals(r.args[2], r.args[3], r.args[4], r.args[5]) for r in reqs]
        inputs = self._on_device(self.encode([r.args[0] for r in reqs], visuals))
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self._model.generate(**inputs, **settings.generate_kwargs(), pad_token_id=pad)
        new = out[:, inputs["input_ids"].shape[1]:].cpu()
        texts = tok.batch_decode(new, skip_special_tokens=True)
        results = []
        for r, text, n_in, n_out in zip(reqs, texts, inputs["attention_mask"].sum(dim=1).tolist(),
                                        generated_lengths(new, self._stop_token_ids())):
            self._record(r.args[4], r.args[3], "generate_until", n_in, n_out)
            results.append(GenerationResult(text=cut_at_stop(text, settings.until),
                                            token_counts=TokenCounts(input_tokens=n_in, output_tokens=n_out)))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not supported."""
        raise HippError("hipp_vlm does not support multi-round generation")

