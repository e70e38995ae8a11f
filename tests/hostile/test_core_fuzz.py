"""The coverage-guided fuzzers of `python -m bench hostile`, at a small scale, and what
they found."""

import pytest
from core_fuzz import Report, fuzz_kbdif

from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.input.backend import FrontendRequests, InputDevice, VkbdFeatures
from pvdisplay.planes import input_events as ev
from pvdisplay.wire import kbdif
from rigs import PATIENCE

UNITS = 20_000


def test_a_wheel_of_the_most_negative_step_count_reaches_the_guest_clamped() -> None:
    """Found by the kbdif fuzzer: Wheel(-2**31), which the planes socket accepts, made
    rel_z 2**31 and push() raised ValueError out of the backend's input op."""
    for absolute in (False, True):
        page = bytearray(4096)
        device = InputDevice(
            VkbdFeatures("c0", 640, 480, abs_pointer=True),
            FrontendRequests(abs_pointer=absolute),
            page,
        )
        device.push(device.translate([ev.Wheel(-(2**31))], 640, 480))
        event = kbdif.read_in_event(page, 0)
        assert isinstance(event, kbdif.Position if absolute else kbdif.Motion)
        assert event.rel_z == 2**31 - 1
        device.release()


@pytest.mark.processes
def test_the_display_fuzzer_gets_past_the_checks_and_finds_nothing() -> None:
    with DomainLauncher() as host:
        domain = host.start_domain("core_fuzz:fuzz_display", str(UNITS), "7")
        assert domain.control.poll(PATIENCE)
        report: Report = domain.control.recv()
    assert (report.crashes, report.hangs, report.first_crash) == (0, 0, "")
    assert report.units >= UNITS
    # Guided inputs reach requests that succeed (a buffer made, attached and shown), and
    # the corpus grew past its one seed.
    assert report.statuses.get(0, 0) > 0
    assert report.corpus > 1


def test_the_kbdif_fuzzer_finds_nothing_now() -> None:
    report = fuzz_kbdif(UNITS, 7)
    assert (report.crashes, report.hangs, report.first_crash) == (0, 0, "")
    assert report.corpus > 1
