"""Inference backends behind one call: a float32 batch in host memory -> (patch mask, margin) in host memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from pipeline.infer.graph import SegmentationGraph

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Backend(Protocol):
    name: str
    device: str
    precision: str

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class TorchBackend:
    """Eager PyTorch on CPU or CUDA; reduced precision runs the ViT under autocast, labelling stays fp32."""

    graph: SegmentationGraph
    device: str = "cpu"
    precision: str = "fp32"
    name: str = "torch"

    def __post_init__(self) -> None:
        if self.precision not in DTYPES:
            raise ValueError(f"precision {self.precision!r} is not one of {sorted(DTYPES)}")
        self.graph = self.graph.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        with torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.precision], enabled=self.precision != "fp32"):
            mask, margin = self.graph(x)
        return mask.cpu().numpy(), margin.float().cpu().numpy()
