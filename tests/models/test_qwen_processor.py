"""Qwen2.5-VL inputs at real scale: the calibration pixel cap and the checkpoint's own chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from hipp_torchprune import api
from hipp_torchprune.checkpoint import save_pruned
from hipp_torchprune.cli import main
from hipp_torchprune.errors import CalibrationError, CheckpointError
from hipp_torchprune.loading import load_processor
from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS, cap_pixels, pixel_cap_kwargs
from hipp_torchprune.models.qwen_processor import IMAGE_PAD, QwenImageProcessor
from hipp_torchprune.models.tiny import build_tiny

#: A template no built-in fallback could produce (the word marks every rendered turn).
DISTINCT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} Context\n"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _real_scale_processor() -> QwenImageProcessor:
    """The tiny tokenizer with Qwen2.5-VL-3B's image settings (its checkpoint allows 12,845,056 pixels)."""
    _, tiny = build_tiny("tiny-qwen2_5_vl")
    image_processor = Qwen2VLImageProcessorPil(min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    return QwenImageProcessor(image_processor, tiny.tokenizer, tiny.chat_template)


def _image_tokens(processor, image: Image.Image) -> int:
    adapter_text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red object ?"}]}])
    batch = processor(images=[image], text=[adapter_text], return_tensors="pt")
    pad = processor.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    return int((batch["input_ids"] == pad).sum())


def test_max_pixels_caps_a_phone_photo_and_leaves_the_processor_alone() -> None:
    processor = _real_scale_processor()
    photo = Image.new("RGB", (4032, 3024), (120, 60, 30))
    assert _image_tokens(processor, photo) == 15552  # the checkpoint's own limit
    capped = cap_pixels(processor, DEFAULT_MAX_PIXELS)
    tokens = _image_tokens(capped, photo)
    assert tokens <= DEFAULT_MAX_PIXELS // (28 * 28) and tokens == 1230
    assert _image_tokens(cap_pixels(processor, 200_704), photo) <= 256
    assert processor.image_processor.size.longest_edge == 12845056  # saved checkpoints keep their own


def test_max_pixels_never_raises_the_processors_own_limit() -> None:
    _, processor = build_tiny("tiny-qwen2_5_vl")  # 3136 pixels at most -> 4 tokens
    image = Image.new("RGB", (640, 640))
    assert _image_tokens(cap_pixels(processor, DEFAULT_MAX_PIXELS), image) == _image_tokens(processor, image) == 4
    assert _image_tokens(cap_pixels(processor, 784), image) == 1


def test_fixed_resolution_processors_are_not_capped() -> None:
    _, processor = build_tiny("tiny-llava")
    assert pixel_cap_kwargs(processor, 784) == {}
    assert cap_pixels(processor, None) is processor


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_max_pixels_is_a_typed_error(bad) -> None:
    _, processor = build_tiny("tiny-qwen2_5_vl")
    with pytest.raises(CalibrationError, match="max_pixels"):
        cap_pixels(processor, bad)


@pytest.mark.parametrize("command", ["calibrate", "prune", "train"])
def test_cli_calibration_uses_max_pixels(command: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every command that calibrates hands the capped processor to the calibration pass."""
    seen = []

    class Stop(Exception):
        pass

    def fake_calibrate(model, processor, samples, **kwargs):
        seen.append(processor)
        raise Stop

    # prune calibrates through api.calibrate; calibrate and train through profile_model (per batch)
    monkeypatch.setattr("hipp_torchprune.api.calibrate", fake_calibrate)
    monkeypatch.setattr("hipp_torchprune.hipp.calibrate.profile_model", fake_calibrate)
    monkeypatch.setattr("hipp_torchprune.hipp.run.profile_model", fake_calibrate)
    args = {"calibrate": ["calibrate", "--model", "tiny-qwen2_5_vl", "--data", "random", "--n", "2"],
            "prune": ["prune", "--model", "tiny-qwen2_5_vl", "--importance", "wanda"],
            "train": ["train", "--model", "tiny-qwen2_5_vl", "--data", "random", "--out", str(tmp_path / "p")]}[command]
    if command == "train":  # train reads a data directory; its calibration goes through profile_model too
        monkeypatch.setattr("hipp_torchprune.hipp.run.calibration_samples", lambda *a, **k: [])
    with pytest.raises(Stop):
        main([*args, "--max-pixels", "784"])
    assert seen and getattr(seen[0], "max_pixels", None) == 784
    assert main([*args, "--max-pixels", "0"]) == 2


def _tiny_qwen_checkpoint(directory: Path) -> Path:
    model, processor = build_tiny("tiny-qwen2_5_vl")
    save_pruned(model, directory, processor)
    for name in ("chat_template.json", "chat_template.jinja"):
        (directory / name).unlink(missing_ok=True)
    (directory / "chat_template.jinja").write_text(DISTINCT_TEMPLATE)  # what transformers 5 writes
    return directory


def test_checkpoints_own_chat_template_is_used_and_kept(tmp_path: Path) -> None:
    directory = _tiny_qwen_checkpoint(tmp_path / "ckpt")
    processor = load_processor(directory)
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a red object ?"}]}])
    assert text.startswith("<|im_start|>user Context\n<|vision_start|>")
    assert main(["prune", "--model", str(directory), "--importance", "magnitude", "--sparsity", "0.25",
                 "--round-to", "16", "--out", str(tmp_path / "pruned")]) == 0
    assert (tmp_path / "pruned" / "chat_template.jinja").read_text() == DISTINCT_TEMPLATE
    assert load_processor(tmp_path / "pruned").chat_template == DISTINCT_TEMPLATE


def test_legacy_json_template_is_read_and_a_missing_one_is_refused(tmp_path: Path) -> None:
    directory = _tiny_qwen_checkpoint(tmp_path / "ckpt")
    (directory / "chat_template.jinja").unlink()
    (directory / "chat_template.json").write_text(json.dumps({"chat_template": DISTINCT_TEMPLATE}))
    assert QwenImageProcessor.from_pretrained(directory).chat_template == DISTINCT_TEMPLATE
    (directory / "chat_template.json").unlink()
    config = json.loads((directory / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="chat template"):
        QwenImageProcessor.from_pretrained(directory)


def test_calibration_tokens_follow_the_cap_on_a_tiny_qwen() -> None:
    model, processor = build_tiny("tiny-qwen2_5_vl")
    adapter = api.get_adapter(model)
    image = Image.new("RGB", (640, 640))
    full = adapter.encode(processor, [image], ["Is there a red object ?"])
    capped = adapter.encode(cap_pixels(processor, 784), [image], ["Is there a red object ?"])
    assert int(adapter.vision_positions(full["input_ids"]).sum()) == 4
    assert int(adapter.vision_positions(capped["input_ids"]).sum()) == 1
    with torch.no_grad():
        assert torch.isfinite(model(**capped).logits).all()
