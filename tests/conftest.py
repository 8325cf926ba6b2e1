import os

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be chosen before
# any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from tests.helpers import DEVICES  # noqa: E402

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
