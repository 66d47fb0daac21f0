"""``hipp calibrate``: the calibration pass (statistics + visual sensitivity), cached and printed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from hipp_torchprune.loading import add_dtype_argument
from hipp_torchprune.models.processors import DEFAULT_MAX_PIXELS


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    p = subparsers.add_parser("calibrate", help="calibration statistics and visual sensitivity per layer")
    p.add_argument("--model", required=True, help="checkpoint dir, 'demo', or a tiny model name")
    p.add_argument("--data", required=True, help="data dir (its calibration split is used); 'random' for tiny models")
    p.add_argument("--n", type=int, default=64, help="calibration samples (default 64)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="cap on each calibration image's pixel count (Qwen2.5-VL resizes to fit; default 1280*28*28)")
    p.add_argument("--cache", default=None, help="write profile.json + calibration.safetensors here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write a PNG of visual sensitivity by depth")
    add_dtype_argument(p)
    p.set_defaults(func=run)


def plot_sensitivity(values: list[float], path: str) -> None:
    """Bar chart of visual sensitivity by decoder layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(values) + 2), 3))
    ax.bar(range(len(values)), values, color="tab:green")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("visual sensitivity s_l")
    ax.set_title("max over text tokens of attention mass on vision tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Execute ``hipp calibrate``."""
    from hipp_torchprune.calib_data import calibration_samples
    from hipp_torchprune.hipp.calibrate import profile_model
    from hipp_torchprune.hipp.profile import calibration_key, save_calibration
    from hipp_torchprune.loading import load_model
    from hipp_torchprune.models.processors import cap_pixels

    model, processor = load_model(args.model, dtype=args.dtype)
    samples = calibration_samples(args.data, args.n)
    profile, stats, _ = profile_model(model, cap_pixels(processor, args.max_pixels), samples)
    if args.cache:
        save_calibration(args.cache, profile, stats, calibration_key(model, args.data, args.n, args.max_pixels))
    layers = profile.to_dict()["layers"]
    if args.plot:
        plot_sensitivity([layer["visual_sensitivity"] for layer in layers], args.plot)
    if args.json:
        print(json.dumps({"layers": layers, "n": profile.n_samples}))
        return 0
    print(f"{'layer':>5} {'width':>6} {'vis.sens':>9} {'act.rms':>9} {'row.score':>10}")
    for layer in layers:
        print(f"{layer['index']:>5} {layer['width']:>6} {layer['visual_sensitivity']:>9.4f} "
              f"{layer['act_norm_mean']:>9.4f} {layer['row_score_mean']:>10.4f}")
    print(f"calibrated on {profile.n_samples} samples" + (f"; cached in {args.cache}" if args.cache else ""))
    return 0
