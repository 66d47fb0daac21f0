"""Real shapes: LLaVA-1.5-7B and Qwen2.5-VL-3B, random weights, through the whole pipeline.

Each model is built from its real configuration, written offline below (LLaVA-1.5-7B: CLIP
ViT-L/14-336 + Llama-2-7B, 7,063,427,072 parameters; Qwen2.5-VL-3B: 3,754,622,976 parameters,
``lm_head`` tied to the embeddings), with random weights in bf16: built under transformers'
``no_init_weights()`` with ``_from_config(config, dtype=...)``, filled with normal(0, 0.02)
(norms 1, norm biases 0), then ``tie_weights()``. The tokenizer is an offline word-level one
(ids below 200; the embedding tables keep their real sizes) and the processors are the real
LLaVA one (CLIP, 336x336, 576 image tokens) and the image-only Qwen2.5-VL one.

Every step runs in its own process, as a user would run it, and is reported with its wall
time and the process's peak memory:

- ``build``: build the model and write it as a dense Hugging Face checkpoint (``save_pretrained``);
- ``prune-magnitude`` / ``prune-wanda``: what ``hipp prune`` does (load, calibrate for Wanda,
  plan 22.5% uniform rounded to 64, ``prune_model``, ``save_pruned``);
- ``calibrate``: what ``hipp calibrate --n N`` does (statistics and visual sensitivity);
- ``load-pruned`` then ``forward``: ``load_pruned`` of the magnitude checkpoint and one forward
  pass over a calibration sample (image + prompt);
- ``ratio``: ``hipp.prune_model`` against bare Torch-Pruning (its dependency graph traced on the
  language model the same way, then ``get_pruning_group(gate_proj, ...).prune()`` per layer)
  keeping the same channels, in fresh processes taking turns; both results are hashed to show
  they are byte-identical.

Memory is the peak of the process's *anonymous* resident memory (``RssAnon`` in
``/proc/PID/status``, sampled every 20 ms): the tensors the process allocated itself. Total RSS
(also reported) adds file-backed pages, and a dense checkpoint is loaded memory-mapped, so RSS
counts pages of the checkpoint file the kernel can drop at any time; anonymous memory is what has
to fit in RAM.

``--via cli`` runs the prune and calibrate steps as the real ``hipp`` command; ``--via api``
runs the same library calls in-process in the checkpoint's own dtype (the CLI converted models
to float32 on CPU before it had ``--dtype``); ``auto`` picks ``cli`` when ``hipp prune --help``
lists ``--dtype``.

    python benchmarks/real_shapes.py [--model llava-1.5-7b|qwen2.5-vl-3b|both] [--layers N] [--json OUT]

``--layers N`` keeps the real widths but only N decoder layers (and N vision blocks): CI runs it
with 2 (``tests/test_real_shapes_benchmark.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

MODELS = ("llava-1.5-7b", "qwen2.5-vl-3b")
STEPS = ("build", "prune-magnitude", "prune-wanda", "calibrate", "load-pruned", "ratio")
SPARSITY, ROUND_TO = 0.225, 64
PROMPT_WORDS = "Is there a red object in the image ? Which colour is the object on the left".split()


# ----------------------------------------------------------------------------- configurations

def llava_config(layers: int | None, image_token_id: int, pad_id: int) -> Any:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14 at 336 px + Llama-2-7B (vocab 32064)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=min(24, layers or 24),
                              num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                              hidden_act="quick_gelu", layer_norm_eps=1e-5)
    text = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers or 32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, pad_token_id=pad_id)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")


def qwen_config(layers: int | None, ids: dict[str, int]) -> Any:
    """Qwen/Qwen2.5-VL-3B-Instruct: Qwen2 LM (hidden 2048, 36 layers, 2 KV heads, tied), 32-block ViT."""
    from transformers import Qwen2_5_VLConfig

    depth = min(32, layers or 32)
    vision = dict(depth=depth, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, in_channels=3,
                  fullatt_block_indexes=[i for i in (7, 15, 23, 31) if i < depth] or [depth - 1], tokens_per_second=2)
    text = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=layers or 36, num_attention_heads=16,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
                max_window_layers=70, sliding_window=32768, use_sliding_window=False, tie_word_embeddings=True,
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True,
                            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def model_and_processor(name: str, layers: int | None, dtype: torch.dtype) -> tuple[Any, Any]:
    """The model (random weights in ``dtype``) and an offline processor with its real image settings."""
    from transformers import LlavaForConditionalGeneration, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hipp_torchprune.models.processors import build_llava_processor, build_word_tokenizer
    from hipp_torchprune.models.qwen_processor import IMAGE_PAD, QWEN_SPECIALS, QwenImageProcessor
    from hipp_torchprune.models.tiny import TINY_WORDS

    words = (*TINY_WORDS, *PROMPT_WORDS)
    if name == "llava-1.5-7b":
        processor = build_llava_processor(words, image_size=336, patch_size=14)
        tok = processor.tokenizer
        config = llava_config(layers, tok.convert_tokens_to_ids("<image>"), tok.pad_token_id)
        return random_model(LlavaForConditionalGeneration, config, dtype), processor
    tok = build_word_tokenizer(words, extra_special_tokens=(IMAGE_PAD, *(t for t in QWEN_SPECIALS if t != IMAGE_PAD)))
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    ids.update(bos=tok.bos_token_id, eos=tok.eos_token_id, pad=tok.pad_token_id)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    model = random_model(Qwen2_5_VLForConditionalGeneration, qwen_config(layers, ids), dtype)
    return model, QwenImageProcessor(image_processor, tok)


@torch.no_grad()
def random_model(cls: Any, config: Any, dtype: torch.dtype, seed: int = 0) -> Any:
    """``cls`` built without initialisation, then filled: normal(0, 0.02), norms 1 (biases 0), tied."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = cls._from_config(config, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    norms = {id(p) for m in model.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}
    for name, p in model.named_parameters():
        if id(p) in norms:
            p.fill_(1.0 if name.endswith("weight") else 0.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    model.tie_weights()
    return model.eval()


def write_data(directory: Path, n: int, image_size: int, seed: int = 0) -> None:
    """``n`` POPE and ``n`` ScienceQA rows (lmms-lab columns) with random ``image_size`` photos."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)

    def photo() -> dict[str, Any]:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(buf, "JPEG")
        return {"bytes": buf.getvalue(), "path": None}

    directory.mkdir(parents=True, exist_ok=True)
    pope = [{"question_id": str(i), "question": "Is there a red object in the image?", "answer": "yes",
             "image_source": f"img{i}", "image": photo(), "category": "random"} for i in range(n)]
    sqa = [{"image": photo(), "question": "Which colour is the object on the left?", "choices": ["red", "blue"],
            "answer": 0, "hint": ""} for _ in range(n)]
    pq.write_table(pa.Table.from_pylist(pope), directory / "pope.parquet")
    pq.write_table(pa.Table.from_pylist(sqa), directory / "scienceqa.parquet")


# ----------------------------------------------------------------------------- memory

def proc_memory(pid: int) -> dict[str, int]:
    """``RssAnon`` (anonymous), ``VmRSS`` (all resident) and ``VmHWM`` (peak resident) in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class MemoryWatch:
    """Samples a process's memory every ``interval`` seconds in a thread; keeps the peaks."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        self.pid, self.interval = pid or os.getpid(), interval
        self.peak_anon = self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Read the process's memory once and update the peaks."""
        try:
            mem = proc_memory(self.pid)
        except (OSError, ValueError):
            return
        self.peak_anon = max(self.peak_anon, mem.get("RssAnon", 0))
        self.peak_rss = max(self.peak_rss, mem.get("VmRSS", 0), mem.get("VmHWM", 0))

    def __enter__(self) -> MemoryWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, float]:
        """Peaks in GiB."""
        return {"peak_anon_gib": self.peak_anon / 2**30, "peak_rss_gib": self.peak_rss / 2**30}


class Phase:
    """Times one phase of a child step and watches its peak memory (the step's own process)."""

    def __init__(self, record: dict[str, Any], name: str) -> None:
        self.record, self.name = record, name

    def __enter__(self) -> Phase:
        self.watch = MemoryWatch().__enter__()
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.watch.__exit__()
        self.record[self.name] = {"wall_s": wall, "cpu_s": cpu, **self.watch.result()}


# ----------------------------------------------------------------------------- steps (child processes)

def load_dense(directory: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """The dense checkpoint and its processor, as ``hipp`` loads them (checked to be ``dtype``)."""
    from hipp_torchprune.checkpoint import load_pruned
    from hipp_torchprune.loading import load_processor

    model = load_pruned(directory)
    if next(model.parameters()).dtype != dtype:
        raise SystemExit(f"{directory} loaded as {next(model.parameters()).dtype}, expected {dtype}")
    return model, load_processor(directory)


def child_build(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """Build the model, write it as a dense HF checkpoint with its processor, write the data."""
    rec: dict[str, Any] = {}
    with Phase(rec, "build"):
        model, processor = model_and_processor(a.model, a.layers, a.torch_dtype)
    rec["parameters"] = sum(p.numel() for p in model.parameters())
    rec["tied"] = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    with Phase(rec, "save_pretrained"):
        model.save_pretrained(d / "dense")
        processor.save_pretrained(d / "dense")
    write_data(d / "data", a.calib_n, a.image_size)
    return rec


def child_prune(a: argparse.Namespace, d: Path, importance: str) -> dict[str, Any]:
    """``hipp prune --importance IMPORTANCE`` through the library, in the checkpoint's dtype."""
    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.checkpoint import save_pruned
    from hipp_torchprune.models.processors import cap_pixels

    rec: dict[str, Any] = {}
    with Phase(rec, "load"):
        model, processor = load_dense(d / "dense", a.torch_dtype)
    with Phase(rec, "calibrate_and_prune"):
        stats = None
        if importance == "wanda":
            samples = calibration_samples(str(d / "data"), a.calib_n)
            stats = api.calibrate(model, cap_pixels(processor, a.max_pixels), samples)
        plan = api.make_plan(model, "uniform", SPARSITY, round_to=ROUND_TO)
        api.prune_model(model, plan, api.importance(importance, model, stats))
    with Phase(rec, "save_pruned"):
        save_pruned(model, d / f"pruned-{importance}", processor, plan=plan.to_dict())
    rec["realized_sparsity"] = plan.realized_sparsity
    return rec


def child_calibrate(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """``hipp calibrate --n N`` through the library: statistics, visual sensitivity, cache."""
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.hipp.calibrate import profile_model
    from hipp_torchprune.hipp.profile import calibration_key, save_calibration
    from hipp_torchprune.models.processors import cap_pixels

    rec: dict[str, Any] = {}
    with Phase(rec, "load"):
        model, processor = load_dense(d / "dense", a.torch_dtype)
    with Phase(rec, "calibrate"):
        samples = calibration_samples(str(d / "data"), a.calib_n)
        profile, stats, _ = profile_model(model, cap_pixels(processor, a.max_pixels), samples)
    save_calibration(d / "calibration", profile, stats, calibration_key(model, d / "data", a.calib_n, a.max_pixels))
    return rec


def child_load_pruned(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """``load_pruned`` of the magnitude checkpoint, then one forward pass over a calibration sample."""
    from hipp_torchprune import api
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.checkpoint import load_pruned
    from hipp_torchprune.loading import load_processor
    from hipp_torchprune.models.processors import cap_pixels
    from hipp_torchprune.pruning.compute import float32_linears

    rec: dict[str, Any] = {}
    with Phase(rec, "load_pruned"):
        model, processor = load_pruned(d / "pruned-magnitude"), load_processor(d / "pruned-magnitude")
    rec["dtype"] = str(next(model.parameters()).dtype)
    if a.forward:
        adapter = api.get_adapter(model)
        image, prompt, _answer = calibration_samples(str(d / "data"), 1)[0]
        batch = adapter.encode(cap_pixels(processor, a.max_pixels), [image], [prompt])
        rec.update(tokens=int(batch["input_ids"].shape[1]),
                   image_tokens=int(adapter.vision_positions(batch["input_ids"]).sum()))
        with Phase(rec, "forward"), torch.no_grad(), float32_linears(model):  # as hipp eval computes on a CPU
            logits = model(**batch, use_cache=False).logits
        rec["logits_finite"] = bool(torch.isfinite(logits).all())
    return rec


def bare_torch_pruning(adapter: Any, keep: list[torch.Tensor]) -> None:
    """What a Torch-Pruning user writes: trace the language model, prune each MLP group."""
    import torch_pruning as tp

    lm = adapter.language_model()
    norms = [(p, 0) for name, p in lm.named_parameters() if name.endswith("norm.weight")]
    graph = tp.DependencyGraph().build_dependency(lm, example_inputs={"input_ids": torch.tensor([[1, 2, 3, 4]])},
                                                  unwrapped_parameters=norms,
                                                  output_transform=lambda out: out.last_hidden_state)
    for mlp, idx in zip(adapter.mlps(), keep):
        removed = sorted(set(range(mlp.gate.out_features)) - set(idx.tolist()))
        graph.get_pruning_group(mlp.gate, tp.prune_linear_out_channels, idxs=removed).prune()


def mlp_digest(adapter: Any) -> str:
    """A hash of every MLP weight's bytes (equal digests: the same channels were kept)."""
    digest = hashlib.blake2b(digest_size=16)
    for mlp in adapter.mlps():
        for lin in (mlp.gate, mlp.up, mlp.down):
            digest.update(lin.weight.detach().contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


def child_ratio(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """Magnitude pruning at 22.5% by ``hipp.prune_model`` (``--route hipp``) or bare Torch-Pruning
    given the same kept channels (``--route tp``); only the pruning itself is timed."""
    import warnings

    from hipp_torchprune import api
    from hipp_torchprune.pruning.operator import keep_indices, layer_scores

    warnings.simplefilter("ignore")  # Torch-Pruning warns about the unwrapped norm weights
    rec: dict[str, Any] = {}
    model, _ = load_dense(d / "dense", a.torch_dtype)
    with torch.no_grad():  # the checkpoint is memory-mapped: copy it in, so no disk read is timed
        for p in model.parameters():
            p.data = p.data.clone()
    adapter = api.get_adapter(model)
    plan = api.make_plan(model, "uniform", SPARSITY, round_to=ROUND_TO)
    keep = None
    if a.route == "tp":  # Torch-Pruning is handed hipp's choice of channels, outside the timing
        scores = layer_scores(adapter, api.importance("magnitude", model))
        keep = [keep_indices(s, k) for s, k in zip(scores, plan.widths_after)]
    with Phase(rec, "prune"):
        if a.route == "hipp":
            api.prune_model(model, plan, api.importance("magnitude", model))
        else:
            bare_torch_pruning(adapter, keep)
    rec["digest"] = mlp_digest(adapter)
    return rec


CHILDREN = {"build": child_build, "prune-magnitude": lambda a, d: child_prune(a, d, "magnitude"),
            "prune-wanda": lambda a, d: child_prune(a, d, "wanda"), "calibrate": child_calibrate,
            "load-pruned": child_load_pruned, "ratio": child_ratio}


# ----------------------------------------------------------------------------- parent

def cli_has_dtype() -> bool:
    """Whether this checkout's ``hipp prune`` takes ``--dtype`` (then it keeps the checkpoint's dtype)."""
    out = subprocess.run([sys.executable, "-m", "hipp_torchprune.cli", "prune", "--help"], capture_output=True,
                         text=True, check=False)
    return "--dtype" in out.stdout


def cli_command(a: argparse.Namespace, d: Path, step: str) -> list[str] | None:
    """The ``hipp`` command line of a prune/calibrate step (``None`` for the other steps)."""
    hipp = [sys.executable, "-m", "hipp_torchprune.cli"]
    common = ["--model", str(d / "dense"), "--sparsity", str(SPARSITY), "--round-to", str(ROUND_TO), "--json"]
    calib = ["--max-pixels", str(a.max_pixels)]
    if step == "prune-magnitude":
        return [*hipp, "prune", *common, "--importance", "magnitude", "--out", str(d / "pruned-magnitude")]
    if step == "prune-wanda":
        return [*hipp, "prune", *common, "--importance", "wanda", "--calib", str(d / "data"),
                "--calib-n", str(a.calib_n), *calib, "--out", str(d / "pruned-wanda")]
    if step == "calibrate":
        return [*hipp, "calibrate", "--model", str(d / "dense"), "--data", str(d / "data"), "--n", str(a.calib_n),
                *calib, "--cache", str(d / "calibration"), "--json"]
    return None


def run_child(a: argparse.Namespace, d: Path, step: str, via: str, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run one step in a fresh process; its wall time and peak memory, plus what it reported."""
    command = cli_command(a, d, step) if via == "cli" else None
    if command is None:
        via = "api"
        command = [sys.executable, __file__, "--child", step, "--model", a.model, "--workdir", str(d),
                   "--dtype", a.dtype, "--calib-n", str(a.calib_n), "--image-size", str(a.image_size),
                   "--max-pixels", str(a.max_pixels), *(["--layers", str(a.layers)] if a.layers else []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HIPP_DISABLE_PLUGIN_AUTOLOAD": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    with MemoryWatch(proc.pid) as watch:
        out, err = proc.communicate()
    result = {"model": a.model, "step": step, "via": via, "ok": proc.returncode == 0,
              "wall_s": time.perf_counter() - start, **watch.result()}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0:
        result["error"] = " | ".join(err.strip().splitlines()[-3:])
    elif lines and via == "api":
        result.update(json.loads(lines[-1]))
    return result


def ratio_rounds(a: argparse.Namespace, d: Path) -> dict[str, Any]:
    """``prune_model`` and bare Torch-Pruning, each in fresh processes, taking turns."""
    runs: dict[str, list[dict[str, Any]]] = {"hipp": [], "tp": []}
    for r in range(a.repeats):
        for route in (("hipp", "tp") if r % 2 == 0 else ("tp", "hipp")):
            runs[route].append(run_child(a, d, "ratio", "api", ("--route", route)))
    failed = [run for rs in runs.values() for run in rs if not run["ok"]]
    if failed:
        return {"model": a.model, "step": "ratio", "ok": False, "error": failed[0].get("error")}
    med = {route: {k: statistics.median(run["prune"][k] for run in rs) for k in ("wall_s", "cpu_s")}
           for route, rs in runs.items()}
    digests = {run["digest"] for rs in runs.values() for run in rs}
    for route, rs in runs.items():  # the whole process: the model copied into memory, then pruned
        med[route]["peak_anon_gib"] = max(run["peak_anon_gib"] for run in rs)
    return {"model": a.model, "step": "ratio", "ok": True, "hipp_prune_model": med["hipp"], "bare_tp": med["tp"],
            "ratio_wall": med["hipp"]["wall_s"] / med["tp"]["wall_s"],
            "ratio_cpu": med["hipp"]["cpu_s"] / med["tp"]["cpu_s"], "same_kept_channels": len(digests) == 1,
            "repeats": a.repeats, "peak_anon_gib": max(m["peak_anon_gib"] for m in med.values())}


def run_model(a: argparse.Namespace, root: Path, via: str) -> list[dict[str, Any]]:
    """Every requested step for ``a.model``, in order; a failed step is reported, later ones still run."""
    import shutil

    d = root / a.model
    results = []
    for step in a.steps:
        if step == "ratio":
            results.append(ratio_rounds(a, d))
        else:
            extra = ("--no-forward",) if step == "load-pruned" and not a.forward else ()
            results.append(run_child(a, d, step, via, extra))
        print(format_row(results[-1]), flush=True)
        if step == "prune-wanda":
            shutil.rmtree(d / "pruned-wanda", ignore_errors=True)  # not needed again; frees disk
    return results


def format_row(r: dict[str, Any]) -> str:
    """One line of the results table."""
    if not r["ok"]:
        return f"| {r['model']} | {r['step']} | failed: {r.get('error')} | | |"
    if r["step"] == "ratio":
        return (f"| {r['model']} | prune_model / bare Torch-Pruning | {r['hipp_prune_model']['wall_s']:.2f} s / "
                f"{r['bare_tp']['wall_s']:.2f} s = **{r['ratio_wall']:.2f}x** (CPU time {r['ratio_cpu']:.2f}x), "
                f"same kept channels: {r['same_kept_channels']} | {r['hipp_prune_model']['peak_anon_gib']:.2f} / "
                f"{r['bare_tp']['peak_anon_gib']:.2f} | |")
    phases = ", ".join(f"{k} {v['wall_s']:.1f} s / {v['peak_anon_gib']:.2f} GiB" for k, v in r.items()
                       if isinstance(v, dict) and "wall_s" in v)
    return f"| {r['model']} | {r['step']} ({r['via']}) | {r['wall_s']:.1f} s | {r['peak_anon_gib']:.2f} | " \
           f"{r['peak_rss_gib']:.2f} | {phases}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (the ``--child``/``--route``/``--workdir`` ones are for the step processes)."""
    from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=(*MODELS, "both"), default="both")
    p.add_argument("--layers", type=int, default=None, help="decoder layers (and vision blocks) to keep; default all")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--no-forward", dest="forward", action="store_false", help="skip the forward pass after load-pruned")
    p.add_argument("--calib-n", type=int, default=4, help="calibration samples (default 4)")
    p.add_argument("--image-size", type=int, default=336, help="side of the square random calibration photos")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--repeats", type=int, default=3, help="prune_model / Torch-Pruning rounds (fresh processes)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the step processes")
    p.add_argument("--via", choices=("auto", "api", "cli"), default="auto")
    p.add_argument("--workdir", default=None, help="where checkpoints go (default: a temporary directory, removed)")
    p.add_argument("--json", default=None, help="also write every result to this JSON file")
    p.add_argument("--child", choices=sorted(CHILDREN), default=None, help=argparse.SUPPRESS)
    p.add_argument("--route", choices=("hipp", "tp"), default="hipp", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.steps = [s for s in a.steps.split(",") if s]
    unknown = sorted(set(a.steps) - set(STEPS))
    if unknown:
        p.error(f"unknown steps {unknown}; valid: {', '.join(STEPS)}")
    a.torch_dtype = getattr(torch, a.dtype)
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--child``, one step of it) and print the table."""
    a = parse_args(argv)
    if a.child is not None:
        torch.manual_seed(0)
        print(json.dumps(CHILDREN[a.child](a, Path(a.workdir))))
        return 0
    via = ("cli" if cli_has_dtype() else "api") if a.via == "auto" else a.via
    models = MODELS if a.model == "both" else (a.model,)
    print(f"# real shapes, layers={a.layers or 'all'}, {a.dtype}, {a.threads} thread(s), prune/calibrate via {via}")
    print("| model | step | wall | peak anon GiB | peak RSS GiB | phases (wall / peak anon) |\n|---|---|---|---|---|---|")
    results = []
    with tempfile.TemporaryDirectory(prefix="hipp-real-shapes-", dir=a.workdir) as root:
        for model in models:
            a.model = model
            results += run_model(a, Path(root), via)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "torch_dtype"},
                                            "via": via, "results": results}, indent=2))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
