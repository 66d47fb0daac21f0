"""Text-only check: where two memorized tables live in a small Llama, and what row pruning does to them.

The proving ground's POPE questions (by alias) and knowledge questions (about the lore) need two
tables that are larger than the demo model's hidden size: alias -> category and lore thing ->
properties. This script trains a bare 8-layer Llama (hidden 128, the demo model's language
model without the image) on nothing but the stated tables (``Alias : bomazi`` -> ``cup .``,
``Fact : logane`` -> ``edible toy .``; the made-up words' embeddings frozen at their random
init, as the demo trainer's ``freeze_lore`` keeps them), with the aliases homed in layer 1 and
the lore in layer 5 by one of

* ``--homes none``: no homes;
* ``--homes dropout``: home-layer dropout (``demo.homes.home_dropout_masks``, ``--drop``);
* ``--homes route``: home routing (each row's gradient reaches only its home layer's MLP);
* ``--homes both``: home routing, and home-layer dropout on the forward pass (``--drop``), so a
  table is written only in its home layer yet read through perturbed upstream MLPs.

Then it prunes MLP rows (mask mode, by the down-column Wanda score ``mean |activation| x ||down
column||`` over every table row) uniformly, with the two home layers kept, and one layer at a
time at 75 %, and prints the exact-recall share (every answer token right, teacher-forced) of
each table. ``--then-steps S --then-context N`` continues with a second phase (the recall is
then scored in its format): pre-train clean, then move the tables into a noisy context, as the
demo trainer's text stage and instruction tuning do. ``--context N`` puts N random "context" tokens (from 64 extra trainable words, drawn
afresh for every row and step) between ``<s>`` and each row, as the demo trainer shows each
stated fact with a fresh random image. It takes about 10 minutes at one thread on this machine::

    python benchmarks/memory_tables.py --homes route --width 128
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from hipp_torchprune.demo.homes import home_dropout_masks, home_route_masks
from hipp_torchprune.world.categories import CATEGORY_NAMES
from hipp_torchprune.world.lore import fact_sentence, lore_names, lore_table

LAYERS, ALIAS_HOME, LORE_HOME = 8, 1, 5


def table_rows(n_aliases: int, n_lore: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Token ids (N, T), labels (N, T; -100 outside the answers), homes (N,) and vocabulary size:
    the lore facts first, then the aliases (``i``-th alias names category ``i mod 20``)."""
    lore = lore_table(n_lore)
    aliases = lore_names(n_lore + n_aliases)[n_lore:]
    named = [CATEGORY_NAMES[i % len(CATEGORY_NAMES)] for i in range(n_aliases)]
    words = sorted({w for t in lore for w in fact_sentence(t).split()} | set(CATEGORY_NAMES))
    vocab = ["<pad>", "<s>", "Fact", "Alias", ":", *(t.name for t in lore), *aliases, *words]
    ix = {w: i for i, w in enumerate(vocab)}
    seqs = [[1, 2, 4, ix[t.name]] + [ix[w] for w in fact_sentence(t).split()] for t in lore]
    seqs += [[1, 3, 4, ix[a], ix[c], ix["."]] for a, c in zip(aliases, named)]
    length = max(map(len, seqs))
    ids = torch.zeros(len(seqs), length, dtype=torch.long)
    labels = torch.full((len(seqs), length), -100)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, 4:len(s)] = torch.tensor(s[4:])
    return ids, labels, torch.tensor([LORE_HOME] * n_lore + [ALIAS_HOME] * n_aliases), len(vocab)


CONTEXT_WORDS = 64


def with_context(ids: torch.Tensor, labels: torch.Tensor, n: int, first: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids`` and ``labels`` (B, T) with ``n`` random context tokens (ids ``first`` ...
    ``first + CONTEXT_WORDS - 1``) inserted after the first token; unchanged for ``n = 0``."""
    if n == 0:
        return ids, labels
    ctx = torch.randint(first, first + CONTEXT_WORDS, (len(ids), n), generator=gen)  # (B, n)
    ignore = torch.full_like(ctx, -100)
    return (torch.cat([ids[:, :1], ctx, ids[:, 1:]], 1), torch.cat([labels[:, :1], ignore, labels[:, 1:]], 1))


def train(args: argparse.Namespace, ids: torch.Tensor, labels: torch.Tensor, homes: torch.Tensor,
          vocab: int) -> Any:
    """The Llama trained on the tables for ``args.steps`` steps of ``args.batch`` rows (seed 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    most = max(args.context, args.then_context)
    cfg = LlamaConfig(vocab_size=vocab + (CONTEXT_WORDS if most else 0), hidden_size=128,
                      intermediate_size=args.width, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32 + most,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    made_up = slice(5, 5 + args.lore + args.aliases)
    frozen = model.model.embed_tokens.weight.detach()[made_up].clone()
    masks: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(model.model.layers):
        if args.homes in ("route", "both"):  # forward untouched; gradient stopped away from home
            layer.mlp.register_forward_hook(lambda m, a, o, i=i: (
                masks["m"][i] * o + (1 - masks["m"][i]) * o.detach()) if "m" in masks else None)
        if args.homes in ("dropout", "both"):  # rows away from home lose MLP rows
            layer.mlp.down_proj.register_forward_pre_hook(
                lambda m, a, i=i: (a[0] * masks["d"][i],) if "d" in masks else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), weight_decay=0.01)
    gen, ctx_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    state = (model, opt, masks, frozen, made_up, gen, ctx_gen)
    _phase(args, state, ids, labels, homes, vocab, args.steps, args.context)
    if args.then_steps:
        _phase(args, state, ids, labels, homes, vocab, args.then_steps, args.then_context)
    masks.clear()
    return model.eval()


def _phase(args: argparse.Namespace, state: tuple[Any, ...], ids: torch.Tensor, labels: torch.Tensor,
           homes: torch.Tensor, vocab: int, steps: int, context: int) -> None:
    """``steps`` optimizer steps (warm-up, then cosine) with ``context`` random tokens before each row."""
    model, opt, masks, frozen, made_up, gen, ctx_gen = state
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / 200) * (
        0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * s / steps))))
    t0 = time.time()
    for step in range(steps):
        b = torch.randint(len(ids), (args.batch,), generator=gen)  # (B,)
        if args.homes in ("route", "both"):
            masks["m"] = home_route_masks(homes[b], LAYERS)  # (L, B, 1, 1)
        if args.homes in ("dropout", "both") and args.drop > 0:
            masks["d"] = home_dropout_masks(homes[b], LAYERS, args.width, args.drop)  # (L, B, 1, I)
        row_ids, row_labels = with_context(ids[b], labels[b], context, vocab, ctx_gen)  # (B, T + n)
        loss = model(input_ids=row_ids, labels=row_labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.model.embed_tokens.weight[made_up] = frozen
        if step % 1000 == 0:
            print(f"step {step} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)


def exact_recall(model: Any, ids: torch.Tensor, labels: torch.Tensor, n_lore: int) -> tuple[float, float]:
    """(lore, alias) share of rows whose every answer token is predicted right, teacher-forced."""
    with torch.no_grad():
        pred = model(input_ids=ids).logits[:, :-1].argmax(-1)  # (N, T-1)
    target = labels[:, 1:]
    ok = ((pred == target) | (target == -100)).all(1).float()  # (N,)
    return round(ok[:n_lore].mean().item(), 3), round(ok[n_lore:].mean().item(), 3)


def row_scores(model: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, the (I,) down-column Wanda score over every table row."""
    acts: dict[int, torch.Tensor] = {}
    hooks = [layer.mlp.down_proj.register_forward_hook(
        lambda m, inp, out, i=i: acts.__setitem__(i, inp[0].abs().mean((0, 1))))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return [acts[i] * layer.mlp.down_proj.weight.norm(dim=0) for i, layer in enumerate(model.model.layers)]


def main() -> None:
    """Train, then print dense, uniform, homes-kept and single-layer recall."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--homes", choices=("none", "dropout", "route", "both"), default="route")
    parser.add_argument("--aliases", type=int, default=1000)
    parser.add_argument("--lore", type=int, default=800)
    parser.add_argument("--width", type=int, default=256, help="MLP rows per layer")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=128, help="table rows per step")
    parser.add_argument("--drop", type=float, default=0.9, help="largest away-layer share with --homes dropout")
    parser.add_argument("--context", type=int, default=0, help="random context tokens before each row")
    parser.add_argument("--then-steps", type=int, default=0,
                        help="a second phase of this many steps (its own warm-up and cosine) ...")
    parser.add_argument("--then-context", type=int, default=0, help="... with this many context tokens")
    args = parser.parse_args()
    if args.homes == "none":
        args.homes, args.drop = "dropout", 0.0  # dropout hooks installed, never given a mask
    torch.set_num_threads(1)
    ids, labels, homes, vocab = table_rows(args.aliases, args.lore)
    model = train(args, ids, labels, homes, vocab)
    scored = args.then_context if args.then_steps else args.context  # the last phase's format
    ids, labels = with_context(ids, labels, scored, vocab, torch.Generator().manual_seed(2))  # fixed for scoring
    score = row_scores(model, ids)
    layers = model.model.layers
    orig = [(layer.mlp.gate_proj.weight.clone(), layer.mlp.up_proj.weight.clone()) for layer in layers]

    def pruned(ratios: list[float]) -> tuple[float, float]:
        for i, layer in enumerate(layers):
            layer.mlp.gate_proj.weight.data.copy_(orig[i][0])
            layer.mlp.up_proj.weight.data.copy_(orig[i][1])
            drop = score[i].argsort()[:round(ratios[i] * args.width)]
            layer.mlp.gate_proj.weight.data[drop] = 0
            layer.mlp.up_proj.weight.data[drop] = 0
        return exact_recall(model, ids, labels, args.lore)

    print(vars(args), "dense (lore, alias)", exact_recall(model, ids, labels, args.lore))
    for r in (0.3, 0.5):
        print(f"uniform {r}", pruned([r] * LAYERS))
        spared = [0.0 if i in (ALIAS_HOME, LORE_HOME) else r * LAYERS / (LAYERS - 2) for i in range(LAYERS)]
        print(f"homes kept {r}", pruned(spared))
    for i in range(LAYERS):
        print(f"layer {i} 75%", pruned([0.75 if j == i else 0.0 for j in range(LAYERS)]))


if __name__ == "__main__":
    main()
