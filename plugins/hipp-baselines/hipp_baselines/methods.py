"""The MLP-row baselines as (allocation strategy, importance) pairs (METHOD_NOTES §10).

=============  ==========  ==========  =================================================
method         strategy    importance  what it is
=============  ==========  ==========  =================================================
``random``     random      wanda       random layer ratios, same total, rows by Wanda score
``wanda``      uniform     wanda       Wanda-sp: uniform ratio, lowest ``|W|*||X||`` rows
``llm-pruner`` uniform     taylor      first-order Taylor over gate row/up row/down column
``owl``        owl         wanda       outlier-weighted layer ratios (``hipp-owl``)
``ecoflap``    ecoflap     wanda       zeroth-order layer importance, inverse ratios
=============  ==========  ==========  =================================================

``hipp prune --method NAME`` selects them by name; ``hipp prune --strategy S --importance I``
selects the same pairs by their parts.
"""

from __future__ import annotations

from typing import ClassVar

from hipp_torchprune.methods import MLPRowMethod


class RandomMethod(MLPRowMethod):
    """Random per-layer ratios with the same total; rows chosen by the Wanda score."""

    name: ClassVar[str] = "random"
    strategy: ClassVar[str] = "random"
    importance: ClassVar[str] = "wanda"


class WandaMethod(MLPRowMethod):
    """Structured Wanda (Wanda-sp): the same ratio in every layer."""

    name: ClassVar[str] = "wanda"
    strategy: ClassVar[str] = "uniform"
    importance: ClassVar[str] = "wanda"


class LLMPrunerMethod(MLPRowMethod):
    """LLM-Pruner block-wise: uniform ratio, first-order Taylor importance of each coupled group."""

    name: ClassVar[str] = "llm-pruner"
    strategy: ClassVar[str] = "uniform"
    importance: ClassVar[str] = "taylor"


class OWLMethod(MLPRowMethod):
    """OWL layer ratios (needs the ``hipp-owl`` plugin registered), Wanda rows."""

    name: ClassVar[str] = "owl"
    strategy: ClassVar[str] = "owl"
    importance: ClassVar[str] = "wanda"


class EcoFLaPMethod(MLPRowMethod):
    """ECoFLaP-style layer ratios from zeroth-order layer importance, Wanda rows."""

    name: ClassVar[str] = "ecoflap"
    strategy: ClassVar[str] = "ecoflap"
    importance: ClassVar[str] = "wanda"


#: Every MLP-row baseline.
METHODS: tuple[type[MLPRowMethod], ...] = (RandomMethod, WandaMethod, LLMPrunerMethod, OWLMethod, EcoFLaPMethod)
