"""Model adapters for the supported VLM families."""

from hipp_torchprune.adapters.base import MLPProjections, ModelAdapter
from hipp_torchprune.adapters.llava import LlavaAdapter
from hipp_torchprune.adapters.qwen2_5_vl import Qwen25VLAdapter

__all__ = ["LlavaAdapter", "MLPProjections", "ModelAdapter", "Qwen25VLAdapter"]
