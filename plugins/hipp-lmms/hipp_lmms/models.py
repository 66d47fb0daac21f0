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
* :meth:`HippVLM.clean` is overridden: the base class deletes every ``nn.Module`` attribute
  after each ``evaluate()``, which would make a wrapper unusable for a second evaluation.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from hipp_torchprune.errors import CheckpointError, HippError
from hipp_torchprune.evaluation import answer_token_ids, last_position_logprobs, logsumexp
from hipp_lmms.utils import answer_variants

#: Default examples per forward pass (``hipp eval``'s default, so batches are identical).
DEFAULT_BATCH_SIZE = 64


class ModelArgsError(HippError, ValueError):
    """A ``--model_args`` value of ``hipp_vlm`` is unknown or malformed."""


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ModelArgsError(f"hipp_vlm: {name}={value!r} is not a boolean (use true or false)")


def _as_batch_size(value: Any) -> int:
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError) as exc:
        raise ModelArgsError(f"hipp_vlm: batch size {value!r} is not an integer") from exc
    if size < 1:
        raise ModelArgsError(f"hipp_vlm: batch size must be >= 1, got {size}")
    return size


def _pick_device(device: str | None) -> str:
    if device and device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_for_eval(pretrained: str, device: str, dtype: str | None) -> tuple[Any, Any]:
    """Load ``pretrained`` (checkpoint dir, ``demo`` or tiny name) as ``(model, processor)`` in eval mode."""
    from hipp_torchprune.loading import load_model

    if not str(pretrained).strip():
        raise CheckpointError("hipp_vlm: pretrained= is empty; give a checkpoint directory or 'demo'")
    model, processor = load_model(str(pretrained).strip())
    if dtype:
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ModelArgsError(f"hipp_vlm: dtype={dtype!r} is not a torch dtype (float32, bfloat16, float16)")
        model = model.to(getattr(torch, dtype))
    elif device != "cpu":
        model = model.to(torch.bfloat16)
    return model.to(device).eval(), processor


class HippVLM(lmms):
    """lmms-eval wrapper around a (possibly pruned) LLaVA / Qwen2.5-VL model.

    Args:
        pretrained: checkpoint directory, ``demo`` or a tiny config name (ignored when ``model``
            is given).
        model: a model already in memory (then ``processor`` is required).
        processor: the model's processor.
        device: ``cpu`` / ``cuda`` (default: cuda when available).
        dtype: ``float32`` / ``bfloat16`` / ``float16`` (default: float32 on CPU, bfloat16 on GPU).
        batch_size: contexts per forward pass (lmms-eval's ``--batch_size``; ``auto`` = 64).
        answer_pooling: score known answers as ``hipp eval`` does (see the module docstring).
        max_new_tokens: default generation length for :meth:`generate_until`.
        threads: torch CPU threads, when given.
    """

    is_simple = True

    def __init__(self, pretrained: str = "demo", model: Any = None, processor: Any = None,
                 device: str | None = None, dtype: str | None = None, batch_size: Any = DEFAULT_BATCH_SIZE,
                 answer_pooling: Any = True, max_new_tokens: Any = 32, threads: Any = None,
                 max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ModelArgsError(f"hipp_vlm: unknown model argument(s) {', '.join(sorted(unknown))}; valid: "
                                 "pretrained, device, dtype, batch_size, answer_pooling, max_new_tokens, threads")
        if threads:
            torch.set_num_threads(int(threads))
        self.batch_size_per_gpu = _as_batch_size(batch_size)
        self.answer_pooling = _as_bool(answer_pooling, "answer_pooling")
        self.max_new_tokens = int(max_new_tokens)
        if model is not None:
            if processor is None:
                raise ModelArgsError("hipp_vlm: wrapping an in-memory model needs its processor too")
            self._model, self._processor = model.eval(), processor
        else:
            self._model, self._processor = load_for_eval(pretrained, _pick_device(device), dtype)
        self._templates: dict[int, str] = {}
        self._variant_ids: dict[tuple[str, ...], list[int]] = {}

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
            for key, row in zip(chunk, logprobs):
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
        inputs = {k: (v.to(self.device, self._model.dtype) if k == "pixel_values" else v.to(self.device))
                  for k, v in batch.items() if hasattr(v, "to")}
        with torch.inference_mode():
            logits = self._model(**inputs, use_cache=False, logits_to_keep=width + 1).logits[:, :width]
            logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
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

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy batched generation; each output is cut at the first ``until`` string."""
        outputs: list[str] = []
        for s in range(0, len(requests), self.batch_size_per_gpu):
            outputs.extend(self._generate_batch(requests[s:s + self.batch_size_per_gpu]))
        return outputs

    def _generate_batch(self, reqs: Sequence[Instance]) -> list[str]:
        gen_kwargs = dict(reqs[0].args[1] or {})
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
        visuals = [self._visuals(r.args[2], r.args[3], r.args[4], r.args[5]) for r in reqs]
        batch = self.encode([r.args[0] for r in reqs], visuals)
        inputs = {k: (v.to(self.device, self._model.dtype) if k == "pixel_values" else v.to(self.device))
                  for k, v in batch.items() if hasattr(v, "to")}
        tok = self.tokenizer
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=max_new, do_sample=False,
                                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [_cut(t, until) for t in texts]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        """Not supported."""
        raise HippError("hipp_vlm does not support multi-round generation")


def _cut(text: str, until: Iterable[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text
