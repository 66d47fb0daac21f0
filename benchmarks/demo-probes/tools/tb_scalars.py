"""Probe tool (session 22): a run's TensorBoard scalars as text, six points a curve (first, four
between, last), for reading a ``--no-progress`` training or insertion run while it goes.

    python benchmarks/demo-probes/tools/tb_scalars.py out/i38/runs [out/i39/runs ...]
"""
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

for run_dir in sys.argv[1:]:
    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    print(run_dir)
    for tag in sorted(acc.Tags()["scalars"]):
        events = acc.Scalars(tag)
        step = max(1, len(events) // 5)
        points = events if len(events) <= 6 else [events[0], *events[step::step][:4], events[-1]]
        print(f"  {tag}: " + ", ".join(f"{e.step}:{e.value:.3f}" for e in points))
