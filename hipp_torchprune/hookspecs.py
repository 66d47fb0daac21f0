"""Hook specifications: the extension points of hipp-torchprune.

A plugin is any object (usually a module) with functions marked by ``hookimpl``. The built-in
adapters, scorers and strategies are registered as such plugins too; third-party packages plug
in through the ``hipp_torchprune`` entry-point group::

    [project.entry-points.hipp_torchprune]
    myplugin = "my_package.plugin"

Each hook returns a list of classes that carry a unique ``name`` class attribute.
"""

from __future__ import annotations

import pluggy

#: Marker for hook specifications (project name ``hipp_torchprune``).
hookspec = pluggy.HookspecMarker("hipp_torchprune")
#: Marker that plugins use for hook implementations.
hookimpl = pluggy.HookimplMarker("hipp_torchprune")


@hookspec
def hipp_model_adapters() -> list[type]:
    """Return model-adapter classes (subclasses of :class:`hipp_torchprune.adapters.ModelAdapter`).

    An adapter declares which model classes it ``handles`` and where the language model, its
    decoder layers, MLP projections and vision tokens are.

    :return: adapter classes; each has a unique ``name`` (e.g. ``"llava"``).
    """


@hookspec
def hipp_importance_scorers() -> list[type]:
    """Return importance-scorer classes: Torch-Pruning ``Importance`` subclasses built as
    ``cls(model, stats, **options)`` and called on a group, returning one score per channel.

    :return: scorer classes; each has a unique ``name`` (e.g. ``"wanda"``), a ``needs_grads``
        flag and a ``needs_calibration`` flag.
    """


@hookspec
def hipp_allocators() -> list[type]:
    """Return layer-allocation strategies: classes with ``allocate(request) -> list[float]``
    that turn an :class:`~hipp_torchprune.pruning.allocators.AllocationRequest` (widths, target
    sparsity, ``r_max``, seed, model) into per-layer removal ratios.

    :return: allocator classes; each has a unique ``name`` (e.g. ``"uniform"``).
    """


@hookspec
def hipp_reward_tasks() -> list[type]:
    """Return reward-task classes that score a (possibly masked) model on a benchmark and give
    a scalar reward for policy search (used by the HiPP policy). A class is called as
    ``cls(processor, data_dir, split, limit, batch_size, statistic=...)`` (``statistic`` is
    ``"margin"``, ``"loglik"`` or ``"prob"``, see :mod:`hipp_torchprune.rewards`), and the instance as
    ``task(model) -> float``.

    :return: reward-task classes; each has a unique ``name`` (e.g. ``"pope"``).
    """


@hookspec
def hipp_pruning_methods() -> list[type]:
    """Return whole pruning methods (``hipp prune --method NAME``, ``hipp compare``): classes with
    a unique ``name``, a ``kind`` (``"mlp-rows"`` or ``"slicing"``) and
    ``prune(model, sparsity, context) -> MethodReport``, optionally ``needs(registry) ->
    MethodNeeds`` and ``check(model)`` (see :mod:`hipp_torchprune.methods`).

    An MLP-row method is an (allocation strategy, importance scorer) pair
    (:class:`~hipp_torchprune.methods.MLPRowMethod`); a method with its own route (e.g.
    SliceGPT) removes a parameter count equal to the MLP-sparsity budget's.

    :return: method classes; each has a unique ``name`` (e.g. ``"wanda"``).
    """
