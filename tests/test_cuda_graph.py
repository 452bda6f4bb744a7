"""CudaGraphForward: the model's forward captured in a CUDA graph equals the eager forward."""

from __future__ import annotations

import pytest
import torch

from tcdcn_ext.model import CudaGraphForward, TCDCN, TCDCNConfig, load_model


def test_refuses_a_cpu_model():
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphForward(TCDCN().eval())


@pytest.mark.needs_cuda
@pytest.mark.parametrize("name,batch", [("5pt", 1), ("5pt", 64), ("68pt", 1)])
def test_graph_replay_equals_eager(name, batch):
    model = load_model(name, device="cuda")
    g = CudaGraphForward(model, batch)
    for seed in range(3):  # replays see new inputs
        x = torch.randn(batch, 1, model.input_size, model.input_size,
                        generator=torch.Generator().manual_seed(seed)).cuda()
        with torch.inference_mode():
            eager = model(x)
        got = g(x)
        for k in eager:
            torch.testing.assert_close(got[k], eager[k], rtol=1e-5, atol=1e-5, msg=k)
    with pytest.raises(ValueError, match="captured for input"):
        g(torch.zeros(batch + 1, 1, model.input_size, model.input_size, device="cuda"))


@pytest.mark.needs_cuda
def test_graph_of_a_small_locally_connected_model_matches_cpu():
    torch.manual_seed(0)
    m = TCDCN(TCDCNConfig(channels=(4, 6, 8, 8), feature_dim=16)).eval()
    x = torch.randn(2, 1, 40, 40)
    with torch.inference_mode():
        cpu = m(x)
    got = CudaGraphForward(m.cuda(), 2)(x.cuda())
    for k in cpu:
        torch.testing.assert_close(got[k].cpu(), cpu[k], rtol=1e-4, atol=1e-5, msg=k)
