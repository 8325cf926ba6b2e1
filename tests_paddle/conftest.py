import os

import torch

# Without a GPU the Triton kernels run in Triton's CPU interpreter, chosen before any kernel import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(int(os.environ.get("RR_TEST_THREADS", "1")))
