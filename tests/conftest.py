"""Test-wide settings: one torch thread (small models on a 2-core machine run fastest, and reproducibly, so)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
