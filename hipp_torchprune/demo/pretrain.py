"""Text-only pre-training of the demo model's language model on the world's stated tables.

A real VLM's language model learned its words and facts from text before it ever saw an image.
The demo trainer's stated aliases and lore facts (``Alias : bomazi`` -> ``cup .``, ``Fact :
logane`` -> ``edible toy .``) are such text, but inside visual instruction tuning each step gives
them a sixth of 32 rows and a random image before them, and probes 32-35 never learned them
(``docs/demo-model.md``); ``benchmarks/memory_tables.py`` learns the same tables in 3,000 text-only
steps of 128 rows. :func:`pretrain_tables` runs that stage first: text-only batches (no image
tokens) of both tables, AdamW with its own warm-up and cosine schedule, home routing when the
recipe routes (aliases in the grounding home, facts in the knowledge home), frozen made-up words
kept frozen. It is not resumable part-way (minutes long); the trainer checkpoints after it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from hipp_torchprune.demo.config import TrainConfig, lr_at
from hipp_torchprune.demo.dataset import Example, TokenPool, concat_pools, make_batch, tokenize_pool
from hipp_torchprune.demo.homes import EVERY_LAYER, home_route_masks


def table_pool(examples: dict[str, list[Example]], processor: Any, n_image_tokens: int = 0,
               raw: bool = False) -> tuple[TokenPool, torch.Tensor]:
    """The stated aliases and lore facts as rows, and (N,) whether each is a fact.

    With ``n_image_tokens == 0`` the rows are text-only (pre-training); otherwise they follow an
    image (the trainer's table block): in the chat format, or with ``raw`` right after the image
    tokens, so the answer follows the made-up word as in pre-training.
    """
    rows = list(examples.get("alias", [])) + list(examples.get("fact", []))
    pool = tokenize_pool(rows, processor, n_image_tokens, raw=raw, image=n_image_tokens > 0)
    return pool, torch.tensor([e.topic == "fact" for e in rows])


def block_pool(examples: dict[str, list[Example]], processor: Any, n_image_tokens: int,
               fmt: str) -> tuple[TokenPool, torch.Tensor]:
    """The trainer's table block: the stated tables after an image in ``fmt`` ("raw", "chat" or
    "mixed": both, every statement once in each), and (N,) whether each row is a fact."""
    if fmt != "mixed":
        return table_pool(examples, processor, n_image_tokens, raw=fmt == "raw")
    (raw, raw_facts), (chat, chat_facts) = (table_pool(examples, processor, n_image_tokens, raw=r) for r in (True, False))
    return concat_pools(raw, chat, processor.tokenizer.pad_token_id), torch.cat([raw_facts, chat_facts])


def table_homes(is_fact: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(B,) home layer of each table row: facts in ``knowledge_home``, aliases in ``grounding_home``
    under ``home_kinds`` "memory" and "tables"; every layer otherwise."""
    if cfg.home_kinds not in ("memory", "tables"):
        return torch.full(is_fact.shape, EVERY_LAYER, dtype=torch.long)
    return torch.where(is_fact, cfg.knowledge_home, cfg.grounding_home)


def pretrain_tables(model: Any, opt: torch.optim.Optimizer, captured: dict[str, Any], pool: TokenPool,
                    is_fact: torch.Tensor, cfg: TrainConfig, device: str,
                    after_step: Callable[[int, float], None]) -> None:
    """``cfg.pretrain_steps`` text-only steps of ``cfg.pretrain_batch`` table rows.

    ``captured`` is the dict the home-routing hooks read; ``after_step(step, loss)`` runs after
    every optimizer step (the trainer restores frozen rows, logs and advances its bar there).
    """
    rng = np.random.default_rng([cfg.seed, 23])  # its own stream: the main loop's draws are unchanged
    stage = replace(cfg, steps=cfg.pretrain_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, stage))
    params = [p for g in opt.param_groups for p in g["params"]]
    n_layers = model.config.text_config.num_hidden_layers
    for step in range(cfg.pretrain_steps):
        idx = torch.from_numpy(rng.integers(0, len(pool.lengths), size=cfg.pretrain_batch))  # (B,)
        batch = {k: v.to(device) for k, v in make_batch(pool, idx, None, [], []).items()}
        if cfg.home_routing:
            captured["route"] = home_route_masks(table_homes(is_fact[idx], cfg), n_layers).to(device)  # (L, B, 1, 1)
        try:
            loss = model(**batch, use_cache=False).loss
        finally:
            captured.pop("route", None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        after_step(step + 1, float(loss.detach()))
    for group in opt.param_groups:  # the main schedule starts from the configured rates
        group["lr"] = group["initial_lr"]
