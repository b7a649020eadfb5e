"""The guest tests' state directory: a NILFS2 pool on the guest's scratch disk (/dev/vda),
purged afterwards with nothing of it left mounted."""

import os
import tempfile
from pathlib import Path

import pytest

DEVICE = "/dev/vda"


@pytest.fixture
def ctx():
    home = Path(tempfile.mkdtemp(prefix="zapvm-"))
    os.environ["ZAP_HOME"] = str(home)
    from zapckpt.context import Context
    from zapckpt.system.pool import init_pool
    from zapckpt.ops.deinit import deinit

    c = Context()
    init_pool(c.state, c.catalog, c.host_id, backend_name="nilfs", device=DEVICE)
    try:
        yield c
    finally:
        deinit(c, purge=True)
        left = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if str(home) in ln]
        assert not left, left
