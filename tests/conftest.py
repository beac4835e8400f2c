import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread_per_worker():
    # pytest-xdist runs one worker per core; more torch threads per worker only oversubscribe.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    # The docs build runs every gallery example, by far the longest test: started first, it
    # runs on one worker while the other works through the rest.
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_docs.py::test_docs_build"))
