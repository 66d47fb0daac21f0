"""What one ``generate_until`` request asks for, as ``transformers`` ``generate`` arguments.

lmms-eval hands every ``generate_until`` request its task's ``generation_kwargs`` (``until``,
``max_new_tokens``, ``temperature``, ``top_p``, ``num_beams``, ``do_sample``). The ``hipp_vlm``
wrapper turns each request's kwargs into a :class:`GenerationSettings` and batches only
requests with equal settings, so an output never depends on which other requests share its
batch (greedy decoding gives the same text at every batch size).

Decoding mode, as lmms-eval's own wrappers read these keys:

* ``temperature: 0`` means greedy decoding, whatever ``do_sample`` says;
* otherwise an explicit ``do_sample`` decides, and without one a ``temperature`` above 0 samples;
* ``top_p`` and ``temperature`` only reach ``generate`` when sampling; ``num_beams`` always does.

Other keys (``image_aspect_ratio`` and the like, meant for other wrappers) are logged once as
ignored, never silently dropped. Nothing here imports lmms-eval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hipp_torchprune.errors import HippError

logger = logging.getLogger(__name__)

#: The ``generation_kwargs`` keys ``hipp_vlm`` honours.
KNOWN_KEYS: frozenset[str] = frozenset({"until", "max_new_tokens", "do_sample", "temperature", "top_p",
                                        "num_beams"})
_warned: set[str] = set()


class GenerationArgsError(HippError, ValueError):
    """A ``generation_kwargs`` value of a ``generate_until`` request is malformed."""


def parse_bool(value: Any, what: str, error: type[Exception] = GenerationArgsError) -> bool:
    """``value`` as a bool (``true``/``false``/``1``/``0``/``yes``/``no``/``on``/``off``); ``error`` otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise error(f"{what}={value!r} is not a boolean (use true or false)")


def _number(value: Any, name: str, kind: type, low: float, high: float | None = None) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise GenerationArgsError(f"generation_kwargs: {name}={value!r} is not a {kind.__name__}") from exc
    if number < low or (high is not None and number > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise GenerationArgsError(f"generation_kwargs: {name}={value!r} must be {bound}")
    return number


@dataclass(frozen=True)
class GenerationSettings:
    """One request's decoding settings (hashable: requests are batched by equal settings).

    Attributes:
        until: stop strings; the text is cut before the first one that occurs.
        max_new_tokens: most tokens generated.
        do_sample: sample (True) or decode greedily / by beam search (False).
        temperature: sampling temperature; None keeps the model's generation config.
        top_p: nucleus-sampling mass; None keeps the model's generation config.
        num_beams: beam width (1: no beam search).
    """

    until: tuple[str, ...] = ()
    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    num_beams: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate`` (sampling knobs only when sampling)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "num_beams": self.num_beams}
        if self.do_sample:
            kwargs.update({k: v for k, v in (("temperature", self.temperature), ("top_p", self.top_p))
                           if v is not None})
        return kwargs


def _stop_strings(until: Any) -> tuple[str, ...]:
    stops = [until] if isinstance(until, str) else list(until or [])
    if not all(isinstance(s, str) for s in stops):
        raise GenerationArgsError(f"generation_kwargs: until={until!r} must be a string or a list of strings")
    return tuple(s for s in stops if s)


def _warn_unknown(keys: Iterable[str]) -> None:
    for key in sorted(set(keys) - KNOWN_KEYS - _warned):
        _warned.add(key)
        logger.warning("hipp_vlm ignores generation_kwargs key %r (it honours %s)", key,
                       ", ".join(sorted(KNOWN_KEYS)))


def generation_settings(gen_kwargs: Mapping[str, Any] | None, default_max_new_tokens: int) -> GenerationSettings:
    """Read one request's ``generation_kwargs`` (see the module docstring for the decoding mode)."""
    kw = dict(gen_kwargs or {})
    _warn_unknown(kw)
    temperature = None if kw.get("temperature") is None else _number(kw["temperature"], "temperature", float, 0.0)
    top_p = None if kw.get("top_p") is None else _number(kw["top_p"], "top_p", float, 0.0, 1.0)
    if temperature == 0:
        do_sample = False
    elif kw.get("do_sample") is not None:
        do_sample = parse_bool(kw["do_sample"], "generation_kwargs: do_sample")
    else:
        do_sample = temperature is not None
    return GenerationSettings(
        until=_stop_strings(kw.get("until")),
        max_new_tokens=_number(kw.get("max_new_tokens", default_max_new_tokens), "max_new_tokens", int, 1),
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        num_beams=_number(kw.get("num_beams", 1), "num_beams", int, 1),
    )


def cut_at_stop(text: str, until: Iterable[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    ends = [text.find(stop) for stop in until if stop and stop in text]
    return text[: min(ends)] if ends else text


def generated_lengths(new_tokens: Any, stop_ids: Iterable[int]) -> list[int]:
    """Per row of ``new_tokens`` (batch × steps), the tokens generated up to and including the first stop id.

    Rows that finish early are padded by ``generate``; that padding is not counted.
    """
    stops = set(stop_ids)
    lengths = []
    for row in new_tokens.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in stops), len(row))
        lengths.append(end)
    return lengths


@dataclass(frozen=True)
class TokenCount:
    """Tokens one model call used.

    Attributes:
        task: lmms-eval task name.
        doc_id: document index within the task's split.
        request_type: ``generate_until`` or ``loglikelihood``.
        input_tokens: prompt tokens fed to the model (image tokens and chat template included;
            for an exactly scored continuation, its tokens too).
        output_tokens: tokens generated (0 for loglikelihood).
    """

    task: str
    doc_id: int
    request_type: str
    input_tokens: int
    output_tokens: int
