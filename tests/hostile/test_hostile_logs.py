"""Log lines a guest can trigger are limited per guest: a flood costs a few lines."""

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile_agents import Remote
from hostile_world import Hostile, guest, world

from pvdisplay import logs
from pvdisplay.wire import displif
from rigs import PATIENCE

RAW_GUEST = "hostile_agents:raw_guest"
FLIPS = 4 * displif.IN_RING_LEN
"""Flips made without reading an event: all but the first ring's worth drop their event."""


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_peer_gets_its_burst_then_its_rate_and_the_dropped_lines_are_counted() -> None:
    now = [0.0]
    logger = logging.getLogger("test.peerlog")
    logger.setLevel(logging.INFO)
    lines = Lines()
    logger.addHandler(lines)
    peer_log = logs.PeerLog(logger, burst=3, per_second=2.0, clock=lambda: now[0])

    for _ in range(100):
        peer_log.warning(1, "flood")
    peer_log.warning(2, "another guest")
    assert len(lines.records) == 4  # guest 1's burst, and guest 2 unharmed
    now[0] = 1.0  # two lines' worth of allowance back
    for _ in range(100):
        peer_log.warning(1, "flood")
    fields = [getattr(record, "fields", {}) for record in lines.records[4:]]
    assert fields == [{"suppressed": 97}, {}]
    logger.removeHandler(lines)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hostile, Path]]:
    run_dir = tmp_path_factory.mktemp("hostile")
    log = run_dir / "host.log"
    with world(run_dir, log=log) as running:
        yield running, log


@pytest.mark.processes
def test_a_guest_that_never_reads_its_event_page_costs_a_few_log_lines(
    logged: tuple[Hostile, Path],
) -> None:
    hostile, log = logged
    host = hostile.host
    before = hostile.resources()
    attacker = host.start_guest(guest("deaf"), RAW_GUEST)
    raw = Remote(attacker.process.control)
    assert raw("connect", 1) == 4  # XenbusState.Connected
    assert raw("flips_unread", FLIPS) == FLIPS
    hostile.wait_flips()

    lines = [line for line in log.read_text().splitlines() if "event ring full" in line]
    assert lines
    assert all(f"device={attacker.domid}/0" in line for line in lines)
    # Every flip past the first ring's worth dropped its event: a line each, unlimited.
    assert len(lines) < (FLIPS - displif.IN_RING_LEN) // 4

    attacker.process.kill()
    host.wait_guest_destroyed(attacker.domid, PATIENCE)
    hostile.wait_resources(before)
