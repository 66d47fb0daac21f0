"""Probe tool (session 22): does a student's pruned layer break every kind because of what its lore
layer's MLP does downstream? ScienceQA by topic for the student as is, with decoder layer ``swap``'s MLP
replaced by the donor's (the teacher's: the lore taken out again), each dense and with layer ``prune``
at 75 % (Wanda rows, 64 calibration samples, as ``scienceqa_topics.py``).

    python benchmarks/demo-probes/tools/swap_mlp.py STUDENT DONOR WORLD SWAP PRUNE [LIMIT]
"""
import json
import sys

import torch

sys.path.insert(0, "benchmarks")
import hipp_torchprune as hipp  # noqa: E402
from hipp_torchprune.data import load_task_docs, parse_tasks  # noqa: E402
from hipp_torchprune.evaluation import prepare_eval  # noqa: E402
from scienceqa_topics import by_topic, single_layer_topics  # noqa: E402

student, donor, world, swap, prune = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
limit = int(sys.argv[6]) if len(sys.argv) > 6 else 600
model, processor = hipp.load_model(student)
model.eval()
task = prepare_eval(processor, world, "scienceqa", limit=limit, split="test").tasks[0]
docs = load_task_docs(world, parse_tasks("scienceqa")[0], split="test", limit=limit)
mlp = model.model.language_model.layers[swap].mlp
own = {k: v.clone() for k, v in mlp.state_dict().items()}
other = hipp.load_model(donor)[0].model.language_model.layers[swap].mlp.state_dict()


def report(name: str) -> None:
    dense = by_topic(model, task, docs)
    (_, pruned), = single_layer_topics(model, processor, world, task, docs, [prune], 0.75)
    print(json.dumps({"state": name, "dense": {k: round(v["accuracy"] * 100, 1) for k, v in dense.items()},
                      f"layer {prune} at 75 %": {k: round(v["accuracy"] * 100, 1) for k, v in pruned.items()}}))


report("student")
with torch.no_grad():
    mlp.load_state_dict({k: v.to(own[k].dtype) for k, v in other.items()})
report(f"student, layer {swap}'s MLP the donor's")
