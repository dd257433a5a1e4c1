"""Shared test configuration: hypothesis profiles and device parametrisation."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Timing-based deadlines are meaningless on a loaded 2-core CI machine; CI also runs
# derandomised so that a red run can be reproduced from its log.
settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

# cuDNN runs float32 convolutions in TF32 unless told otherwise (a 1e-3 relative error);
# the float32 tolerances in these tests are for IEEE float32 arithmetic on every device.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every available device: CPU always, CUDA where present."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Each test starts from the same random state, whatever ran before it."""
    torch.manual_seed(0)
