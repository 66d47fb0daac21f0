"""README.md as a user reads it: every ```python block runs top to bottom on tiny-llava, and the
``accelerate launch`` training command runs exactly as written, on 2 processes, matching 1.

Both read README.md itself at test time, so the README and what is tested cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"


def readme_blocks(language: str) -> list[str]:
    """The fenced ```LANGUAGE blocks of README.md, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def readme_commands(prefix: str) -> list[str]:
    """The lines of README.md's ```bash blocks that start with ``prefix`` (continuations joined)."""
    lines = [line for block in readme_blocks("bash") for line in block.replace("\\\n", " ").splitlines()]
    return [line.split(" #")[0].strip() for line in lines if line.startswith(prefix)]


def test_python_snippets_run_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hipp_torchprune as hipp
    from hipp_torchprune.models.tiny import build_tiny
    from hipp_torchprune.registry import Registry, make_plugin_manager

    blocks = readme_blocks("python")
    assert len(blocks) >= 4 and "build_tiny(\"tiny-llava\")" in blocks[0]  # the set-up block comes first
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102

    dense, _ = build_tiny("tiny-llava")
    expected = hipp.make_plan(dense, "uniform", sparsity=0.225, round_to=64).widths_after
    assert expected != (256,) * 4
    saved = hipp.load_pruned(tmp_path / "pruned")  # written by the Torch-Pruning snippet
    assert tuple(hipp.get_adapter(saved).intermediate_widths()) == expected
    assert [int(m.sum()) for m in namespace["masks"].masks] == list(expected)  # the mask step applied the plan
    adapter = hipp.get_adapter(namespace["model"])  # then physical removal, with the masks' hooks gone
    assert tuple(adapter.intermediate_widths()) == expected
    assert not any(mlp.down._forward_pre_hooks for mlp in adapter.mlps())

    registry = Registry(make_plugin_manager(autoload=False))  # the plugin snippet, registered as a module
    plugin = types.ModuleType("readme_plugin")
    plugin.__dict__.update({k: v for k, v in namespace.items() if k in ("hipp_allocators", "MyAllocator")})
    registry.pm.register(plugin)
    ratios = hipp.allocate(dense, strategy="mine", sparsity=0.3, round_to=16, registry=registry)
    assert len(ratios) == 4 and all(r > 0 for r in ratios.values())


def test_accelerate_launch_command_runs_as_written_and_matches_one_process(tmp_path: Path) -> None:
    """The README's world and ``accelerate launch`` lines, run verbatim with the venv's scripts in a
    fresh directory; a one-process ``python -m`` run of the same arguments logs the same numbers."""
    (build,) = readme_commands("hipp world build")
    (launch,) = readme_commands("accelerate launch")
    argv = shlex.split(launch)
    script = argv.index("-m")  # accelerate's own arguments end here
    assert argv[:2] == ["accelerate", "launch"] and argv[argv.index("--num_processes") + 1] == "2"
    assert argv[script:script + 3] == ["-m", "hipp_torchprune.cli", "train"] and "tiny-llava" in argv
    bin_dir = Path(sys.executable).parent
    for tool in ("hipp", "accelerate"):
        assert (bin_dir / tool).is_file(), f"{tool} is not installed next to {sys.executable}"
    env = {**{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")},
           "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf"),  # no user accelerate config
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    subprocess.run([str(bin_dir / "hipp"), *shlex.split(build)[1:]], cwd=two, env=env, check=True,
                   capture_output=True)
    (one / "WORLD").symlink_to(two / "WORLD")
    procs = [subprocess.Popen([str(bin_dir / "accelerate"), *argv[1:]], cwd=two, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
             subprocess.Popen([sys.executable, *argv[script:]], cwd=one, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    out = argv[argv.index("--out") + 1]
    meta = [json.loads((d / out / "policy.json").read_text()) for d in (two, one)]
    assert [m["processes"] for m in meta] == [2, 1]  # the README's command really starts 2 processes
    logs_two, logs_one = (json.loads((d / out / "train_log.json").read_text()) for d in (two, one))
    steps = int(argv[argv.index("--steps") + 1])
    assert len(logs_two) == steps + 1 and logs_two == logs_one
    weights = [load_file(d / out / "policy.safetensors") for d in (two, one)]
    assert weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k])
                                                           for k in weights[0])
