"""The C eventfd ping-pong the event-channel benchmark measures itself against."""

import re
import subprocess
from collections.abc import Callable
from pathlib import Path


def test_the_c_ping_pong_reports_round_trip_percentiles(
    compile_c: Callable[..., Path],
) -> None:
    binary = compile_c("evtchn_pingpong")
    output = subprocess.run(
        [str(binary), "300"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    match = re.fullmatch(r"rounds=300 p50_ns=(\d+) p99_ns=(\d+)\n", output)
    assert match is not None, output
    p50, p99 = int(match[1]), int(match[2])
    assert 0 < p50 <= p99
