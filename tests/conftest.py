import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests.helpers import DEVICES

# One intra-op thread per test process: the suite runs under pytest-xdist on small tensors.
torch.set_num_threads(int(os.environ.get("RR_TEST_THREADS", "1")))

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("RR_HYPOTHESIS_EXAMPLES", "100")),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("default")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
