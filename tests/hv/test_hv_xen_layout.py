"""pvdisplay.hv.xen.abi against the compiled Linux Xen device headers.

tests/c/xen_sys_layout.c prints, in layout_print.h's records, sizeof and offsetof of
every member of every struct in xen/sys/{gntdev,gntalloc,evtchn}.h and the value of
every ioctl number and flag there and in xenbus_dev.h; the Python side is read from
`abi.LAYOUTS` and the module's public constants. Both directions must agree, so
neither side has anything unchecked.
"""

from collections.abc import Callable
from pathlib import Path

from c_layout import layout_mismatches, python_constants, run_c_report
from pvdisplay.hv.xen import abi


def test_every_struct_and_member_matches(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("xen_sys_layout"))
    assert layout_mismatches(abi, report) == []
    assert (len(report.sizes), len(report.fields)) == (21, 60)


def test_every_ioctl_number_and_flag_matches(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("xen_sys_layout"))
    assert python_constants(abi) == report.constants
    assert sum(name.startswith("IOCTL_") for name in report.constants) == 22


def test_a_moved_member_is_caught(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("xen_sys_layout", "-DPLANT_OFFSET_ERROR=4"))
    assert layout_mismatches(abi, report) == [
        "struct ioctl_gntalloc_alloc_gref index (offset, size, signed): "
        "Python (8, 8, False), C (12, 8, False)"
    ]
