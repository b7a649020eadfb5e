"""The checkpoint's two halves agree: the file on disk holds exactly the values the process had
counted in memory at the frozen instant.

The counter process appends every value it counts. A checkpoint is taken at random moments
while it writes fast; each checkpoint is then branched. The restored process goes on counting
from its in-memory value in the branch's copy of the file. If the snapshot had been taken after
the thaw, the file would already hold values the restored memory has not counted yet, and they
would appear twice; taken before the freeze, values would be missing. Either breaks the run
1, 2, 3, ... that this test checks."""

import random
import time
from pathlib import Path

from helpers import assert_continuous, counted_past, counter_values


N = 12  # each is branched and checked: the suite's time budget, not the property, sets the count


def test_random_checkpoints_are_atomic(zap):
    zap.run_counter("ctr", interval="0.0002")
    rng = random.Random(20261125)
    refs = []
    for _ in range(N):
        time.sleep(rng.uniform(0.01, 0.25))
        refs.append(zap("checkpoint", "ctr").stdout.strip())
    assert refs == [f"ctr@{i}" for i in range(1, N + 1)]

    listed = {c["ref"]: c for c in zap.json("list", "ctr")["checkpoints"]}
    for ref in refs:
        snap = counter_values(Path(listed[ref]["snapshot"]["path"]))
        assert_continuous(snap)
        name = "b" + ref.split("@")[1]
        zap("branch", ref, name)
        vol = zap.volume(name)
        # The restored process appends from its memory; wait until it has written a few more.
        values = counted_past(vol, len(snap) + 20, "branch counting")
        assert values[: len(snap)] == snap
        assert_continuous(values)
        zap("rm", "--force", name)

    # The original never noticed any of it.
    assert_continuous(counter_values(zap.volume("ctr")))
