"""The coverage-guided fuzzers of `python -m bench hostile`, at a small scale, and what
they found."""

import pytest
from core_fuzz import Report

from pvdisplay.hv.local.launcher import DomainLauncher
from pvdisplay.input.backend import FrontendRequests, InputDevice, VkbdFeatures
from pvdisplay.planes import input_events as ev
from pvdisplay.wire import kbdif

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


def fuzzed(entry: str) -> Report:
    """The Report of core_fuzz's `entry` at UNITS, fuzzing in a domain of its own (the
    fuzzer takes over SIGALRM and the tracer of its process). pytest-timeout is the hang
    protection: the fuzzer takes as long as the machine's load makes it."""
    with DomainLauncher() as host:
        report: Report = host.start_domain(f"core_fuzz:{entry}", str(UNITS), "7").control.recv()
    return report


@pytest.mark.processes
def test_the_display_fuzzer_gets_past_the_checks_and_finds_nothing() -> None:
    report = fuzzed("fuzz_display")
    assert (report.crashes, report.hangs, report.first_crash) == (0, 0, "")
    assert report.units >= UNITS
    # Guided inputs reach requests that succeed (a buffer made, attached and shown), and
    # the corpus grew past its one seed.
    assert report.statuses.get(0, 0) > 0
    assert report.corpus > 1


@pytest.mark.processes
def test_the_kbdif_fuzzer_finds_nothing_now() -> None:
    report = fuzzed("fuzz_input")
    assert (report.crashes, report.hangs, report.first_crash) == (0, 0, "")
    assert report.units >= UNITS
    assert report.corpus > 1
