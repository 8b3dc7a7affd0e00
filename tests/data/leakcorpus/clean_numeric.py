"""Clean tests over torch and numpy: first calls set things up, later calls keep nothing."""

import corpus_state
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.no_leaks


def test_model_first_call():
    with torch.no_grad():
        out = corpus_state.Model.get().net(torch.randn(4, 32))
    assert out.shape == (4, 8)


def test_model_with_grad_discarded():
    model = corpus_state.Model.get().net
    loss = model(torch.randn(2, 32)).sum()
    loss.backward()
    model.zero_grad(set_to_none=True)


def test_tensor_ops():
    a = torch.randn(64, 64)
    assert torch.allclose(a @ torch.eye(64), a, atol=1e-5)


def test_conv_first_call():
    conv = torch.nn.Conv1d(1, 4, 3)
    with torch.no_grad():
        assert conv(torch.randn(1, 1, 100)).shape == (1, 4, 98)


def test_softmax_and_topk():
    probs = torch.softmax(torch.randn(10, 100), dim=-1)
    assert probs.topk(5).indices.shape == (10, 5)


def test_numpy_ops():
    a = np.arange(10_000, dtype=np.float64)
    assert float(np.dot(a, a)) > 0


def test_numpy_random_and_fft():
    rng = np.random.default_rng(0)
    assert np.fft.rfft(rng.standard_normal(1024)).shape == (513,)


def test_numpy_to_torch_and_back():
    a = np.ones((32, 32), dtype=np.float32)
    assert torch.from_numpy(a).sum().item() == 1024.0
    assert torch.ones(3).numpy().sum() == 3


def test_torch_manual_seed_and_dropout():
    torch.manual_seed(0)
    drop = torch.nn.Dropout(0.5).train()
    assert drop(torch.ones(100)).shape == (100,)
