"""The export's own record of its time and peak memory, per stage."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCENARIO = textwrap.dedent(
    """
    import json, time
    import numpy as np
    from mobilevlm.export.profile import StageProfile

    profile = StageProfile("small")
    time.sleep(0.05)
    profile.stage("large")
    block = np.ones(300 * 2**20, dtype=np.uint8)  # touched: resident
    del block
    profile.stage("after")
    print(json.dumps(profile.finish()))
    """
)


def test_a_stage_s_peak_is_the_memory_it_held_even_briefly():
    """In a fresh interpreter, so that no other test's memory moves the resident set."""
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    small, large, after = record["stages"]
    assert [s["name"] for s in record["stages"]] == ["small", "large", "after"]
    assert small["seconds"] >= 0.05
    assert large["peak_mib"] - small["peak_mib"] >= 290
    assert after["end_mib"] < large["peak_mib"] - 250  # released
    assert record["peak_rss_mib"] >= large["peak_mib"]
    assert record["seconds"] >= sum(s["seconds"] for s in record["stages"]) - 0.1  # rounded
