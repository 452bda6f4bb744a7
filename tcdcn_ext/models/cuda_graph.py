"""A TCDCN forward of a fixed batch size captured in a CUDA graph (small-batch GPU inference)."""

from __future__ import annotations

import torch
from torch import Tensor

from .tcdcn import TCDCN

__all__ = ["CudaGraphForward"]


class CudaGraphForward:
    """A TCDCN forward of a fixed batch size captured once in a CUDA graph and replayed per call.

    Small-batch inference on a GPU is bound by kernel launches (a dozen per forward), not arithmetic; one graph
    replay launches them all at once. The model must be on a CUDA device; its weights are read at replay time, so
    later in-place weight updates are seen, but replacing parameters or moving the model needs a new capture.

    ``forward(x)`` copies ``x`` (Tensor[batch_size, 1, S, S], any device) into the graph's static input, replays,
    and returns ``{"landmarks", aux logits...}`` as fresh tensors (clones of the static outputs, so results stay
    valid after the next replay). Not thread-safe: one replay at a time per instance.
    """

    def __init__(self, model: TCDCN, batch_size: int = 1, warmup: int = 3) -> None:
        device = next(model.parameters()).device
        if device.type != "cuda":
            raise ValueError(f"CudaGraphForward needs a model on a CUDA device, got {device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = model.eval(), int(batch_size), device
        s = model.input_size
        self.static_in = torch.zeros(self.batch_size, 1, s, s, device=device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(max(1, warmup)):  # lazy initialisation (cuBLAS handles, allocator pools) off-graph
                model(self.static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.static_out = model(self.static_in)

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        if tuple(x.shape) != tuple(self.static_in.shape):
            raise ValueError(f"CudaGraphForward was captured for input {tuple(self.static_in.shape)}, got "
                             f"{tuple(x.shape)}")
        with torch.inference_mode():
            self.static_in.copy_(x, non_blocking=True)
            self.graph.replay()
            return {k: v.clone() for k, v in self.static_out.items()}
