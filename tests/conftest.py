import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_per_worker():
    # pytest-xdist runs one worker per core; more torch threads per worker only oversubscribe.
    torch.set_num_threads(1)
