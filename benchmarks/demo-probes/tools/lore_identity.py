"""Probe tool (session 21): do re-keyed lore words stay tellable apart through the frozen layers?

The first 100 lore words of p57's teacher get new random embeddings at ``scale`` x their mean norm
(0 = keep the teacher's). On text-only prompts ("USER: <question> A. <thing> B. <thing>
ASSISTANT:", four property questions), a ridge probe reads the hidden state at option A after
decoder layers 0 and 5; fit on three questions, it names the thing (identity) and its 14 flags on
the fourth. Session 21: after layer 5, teacher 0.89 identity; re-keyed at 1x 0.60, at 10x 1.00.

    python benchmarks/demo-probes/tools/lore_identity.py 0 1 10 40
"""
import sys

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from hipp_torchprune.world.categories import PROPERTY_NAMES
from hipp_torchprune.world.lore import lore_names, lore_table

src = "benchmarks/demo-probes/teachers/p57"
m = LlavaForConditionalGeneration.from_pretrained(src, torch_dtype=torch.float32).eval()
tok = AutoProcessor.from_pretrained(src).tokenizer
names = list(lore_names(100)); table = lore_table(100)
Y = torch.tensor([[p in t.properties for p in PROPERTY_NAMES] for t in table], dtype=torch.float32)
ids = torch.tensor(tok.convert_tokens_to_ids(names))
emb = m.get_input_embeddings().weight.detach()
lm = m.model.language_model
qs = ["Which of these is an animal ?", "Which of these is usually found in a kitchen ?", "Which of these can be eaten ?", "Which of these has wheels ?"]
def feats(e, layer):
    X = []
    for q in qs:
        texts = [f"USER: {q} A. {a} B. {b} ASSISTANT:" for a, b in zip(names, names[1:] + names[:1])]
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = lm(inputs_embeds=e[enc.input_ids], attention_mask=enc.attention_mask, output_hidden_states=True)
        first = (enc.input_ids == ids[:, None]).float().argmax(1)  # position of option A (thing i)
        X.append(out.hidden_states[layer][torch.arange(100), first])
    return X
for scale in [float(s) for s in sys.argv[1:]]:
    e = emb.clone()
    if scale > 0:
        r = torch.randn(len(ids), e.shape[1], generator=torch.Generator().manual_seed(1))
        e[ids] = r / r.norm(dim=1, keepdim=True) * emb[ids].norm(dim=1).mean() * scale
    for layer in (1, 6):
        X = feats(e, layer)
        Xtr = torch.nn.functional.normalize(torch.cat(X[:3]), dim=-1); Ytr = Y.repeat(3, 1)
        Xte = torch.nn.functional.normalize(X[3], dim=-1)
        # ridge probe: which thing is it (identity), from 3 contexts to a 4th
        I = torch.eye(100).repeat(3, 1)
        W = torch.linalg.solve(Xtr.T @ Xtr + 1e-3 * torch.eye(Xtr.shape[1]), Xtr.T @ I)
        acc = ((Xte @ W).argmax(1) == torch.arange(100)).float().mean().item()
        Wy = torch.linalg.solve(Xtr.T @ Xtr + 1e-3 * torch.eye(Xtr.shape[1]), Xtr.T @ Ytr)
        facc = (((Xte @ Wy) > 0.5).float() == Y).float().mean().item()
        print(f"scale {scale:g} (0 = teacher's own) after layer {layer - 1}: identity {acc:.2f}, flags {facc:.3f} (all-zero {1 - Y.mean():.3f})")
