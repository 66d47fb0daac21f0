"""Probe tool (session 21): can one decoder MLP hold the re-keyed lore? Offline, no insertion run.

The first 100 lore words of p57's teacher get new random embeddings (``scale`` x their norm). On
text-only prompts ("USER: Which of these is an animal ? A. <thing> B. <thing> ASSISTANT:", six
properties x two pairings), it collects the re-keyed copy's input to decoder layer L's MLP at the
lore words and what that MLP would have to add for the layer's output to be the teacher's there,
then fits a copy of the layer's MLP (and a fresh 32-row one) on ten of the twelve contexts and
reports the error (squared distance relative to the teacher's output, as ``lore_hidden``) on the
two held out. Session 21, L=4, scale 10: frozen 0.60; 128 rows 0.055 train / 0.326 held out;
32 rows 0.137 / 0.215.

    python benchmarks/demo-probes/tools/lore_fit.py 4 10
    python benchmarks/demo-probes/tools/lore_fit.py 0 1 unflagged   # InsertConfig.lore_rekey (session 22)
"""
import copy
import sys

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from hipp_torchprune.demo.vocab import InsertConfig, rekeyed_lore_embeddings
from hipp_torchprune.world.lore import lore_names

torch.manual_seed(0)
L = int(sys.argv[1]); scale = float(sys.argv[2]); rekey = sys.argv[3] if len(sys.argv) > 3 else "random"
src = "benchmarks/demo-probes/teachers/p57"
t = LlavaForConditionalGeneration.from_pretrained(src, torch_dtype=torch.float32).eval()
tok = AutoProcessor.from_pretrained(src).tokenizer
names = list(lore_names(100)); ids = torch.tensor(tok.convert_tokens_to_ids(names))
s = copy.deepcopy(t)
with torch.no_grad():
    e = s.get_input_embeddings().weight
    e[ids] = rekeyed_lore_embeddings(e[ids], InsertConfig(lore_rekey=rekey, lore_embedding_scale=scale, seed=0))
qs = ["Which of these is an animal ?", "Which of these is usually found in a kitchen ?", "Which of these can be eaten ?",
      "Which of these has wheels ?", "Which of these is usually found in a street ?", "Which of these is a toy ?"]
def collect(q, shift):
    texts = [f"USER: {q} A. {a} B. {b} ASSISTANT:" for a, b in zip(names, names[shift:] + names[:shift])]
    enc = tok(texts, return_tensors="pt", padding=True)
    where = torch.isin(enc.input_ids, ids)
    got = {}
    h1 = s.model.language_model.layers[L].mlp.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    h2 = s.model.language_model.layers[L].mlp.register_forward_hook(lambda m, a, o: got.__setitem__("mlp", o))
    with torch.no_grad():
        so = s.model.language_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
        to = t.model.language_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, output_hidden_states=True)
    h1.remove(); h2.remove()
    mid = so.hidden_states[L + 1] - got["mlp"]
    tgt = to.hidden_states[L + 1]
    return got["x"][where], (tgt - mid)[where], tgt[where], (so.hidden_states[L + 1])[where]
data = [collect(q, sh) for q in qs for sh in (1, 7)]
X = torch.cat([d[0] for d in data[:-2]]); Y = torch.cat([d[1] for d in data[:-2]]); T = torch.cat([d[2] for d in data[:-2]])
Xt = torch.cat([d[0] for d in data[-2:]]); Yt = torch.cat([d[1] for d in data[-2:]]); Tt = torch.cat([d[2] for d in data[-2:]])
St = torch.cat([d[3] for d in data[-2:]])
rel = lambda p, y, t: ((p - y).pow(2).sum(-1).mean() / t.pow(2).sum(-1).mean()).item()
print(f"layer {L} scale {scale} {rekey}: train rows {len(X)}, test rows {len(Xt)}; frozen MLP's error (held-out) {rel(St, Tt, Tt):.3f}")
for width in (128, 32):
    mlp = copy.deepcopy(s.model.language_model.layers[L].mlp) if width == 128 else None
    if mlp is None:
        from transformers.models.llama.modeling_llama import LlamaMLP
        cfg = copy.deepcopy(s.config.text_config); cfg.intermediate_size = width; mlp = LlamaMLP(cfg)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for step in range(3000):
        idx = torch.randint(0, len(X), (256,))
        loss = ((mlp(X[idx]) - Y[idx]).pow(2).sum(-1).mean() / T[idx].pow(2).sum(-1).mean())
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        print(f"  MLP width {width}: train error {rel(mlp(X), Y, T):.3f}, held-out question error {rel(mlp(Xt), Yt, Tt):.3f}")
