"""Ten times the data through ingest, qc and encode (bench/load.py, small): memory stays flat and nothing is lost."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ten_times_the_data_keeps_peak_memory_flat_and_loses_nothing(tmp_path):
    """Each stage as its own process on an embedded Ray of 2 CPUs, 20 then 200 synthetic videos: every source,
    clip and sample is accounted for, and ingest's and qc's process trees (Ray's included) peak within 1.1x of
    their 1x peak. Encode's peak is not asserted at this size: at 20 videos its workers have not yet met every
    bucket's largest batch, whose activations set their peak (1.11x to 1.33x here, depending on load); its
    full-size figure (240 and 2,400 videos: 1.03x) comes from the same script.)"""
    out = tmp_path / "load.json"
    subprocess.run([sys.executable, "bench/load.py", "--base", "20", "--scale", "10", "--no-speedup", "--no-ceiling",
                    "--json", str(out)], cwd=REPO, check=True, timeout=900, capture_output=True)
    table = json.loads(out.read_text())
    assert table["ingest"]["counts_nx"]["sources"] == 200 and table["encode"]["counts_nx"]["samples"] > 200
    for stage in ("ingest", "qc", "encode"):
        assert table[stage]["lost"] == 0, (stage, table[stage])
    for stage in ("ingest", "qc"):
        assert table[stage]["memory_ratio"] <= 1.1, (stage, table[stage])
