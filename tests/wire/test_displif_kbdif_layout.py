"""The displif and kbdif codecs' layouts and constants against the compiled C headers.

tests/c/{displif,kbdif}_layout.c print offsetof/sizeof/signedness of every
member the codecs cover and the value of every macro they mirror; the Python
side is read from each codec's own `struct.Struct`-derived `LAYOUTS` and module
constants, so both directions must agree: nothing on either side goes unchecked.
The last test pins down what `Layout` itself promises the codecs.
"""

from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from c_layout import layout_mismatches, python_constants, run_c_report
from pvdisplay.wire import displif, kbdif
from pvdisplay.wire.layout import Field, Layout

HEADERS = [
    pytest.param(displif, "displif_layout", id="displif"),
    pytest.param(kbdif, "kbdif_layout", id="kbdif"),
]


@pytest.mark.parametrize(("module", "program"), HEADERS)
def test_layouts_match_compiled_structs(
    compile_c: Callable[..., Path], module: ModuleType, program: str
) -> None:
    report = run_c_report(compile_c(program))
    assert report.fields, "the C program reported no fields"
    assert layout_mismatches(module, report) == []


@pytest.mark.parametrize(("module", "program"), HEADERS)
def test_constants_match_compiled_macros(
    compile_c: Callable[..., Path], module: ModuleType, program: str
) -> None:
    report = run_c_report(compile_c(program))
    assert python_constants(module) == report.constants


def test_displif_diagram_bpp_offset_is_caught(compile_c: Callable[..., Path]) -> None:
    """A C side that believed the ASCII diagram (bpp at 36) must fail the comparison."""
    report = run_c_report(compile_c("displif_layout", "-DPLANT_OFFSET_ERROR=4"))
    assert layout_mismatches(displif, report) == [
        "struct xendispl_req op.set_config.bpp (offset, size, signed): "
        "Python (32, 4, False), C (36, 4, False)"
    ]


def test_kbdif_planted_keycode_offset_is_caught(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("kbdif_layout", "-DPLANT_OFFSET_ERROR=-2"))
    assert layout_mismatches(kbdif, report) == [
        "union xenkbd_in_event key.keycode (offset, size, signed): "
        "Python (4, 4, False), C (2, 4, False)"
    ]


def test_comparison_notices_a_missing_python_field(compile_c: Callable[..., Path]) -> None:
    report = run_c_report(compile_c("displif_layout"))
    report.fields[("struct xendispl_req", "op.dbuf_create.reserved_future")] = (44, 4, False)
    assert layout_mismatches(displif, report) == [
        "struct xendispl_req op.dbuf_create.reserved_future (offset, size, signed): "
        "Python None, C (44, 4, False)"
    ]


def test_layout_packs_attributes_by_member_name_and_unpacks_all_but_tags() -> None:
    layout = Layout("struct t", ("kind", "B"), ("", "x"), ("u.v.value", "h"), tags=["kind"])
    assert layout.fields == {"kind": Field(0, 1, False), "u.v.value": Field(2, 2, True)}
    packet = SimpleNamespace(kind=7, value=-2)
    assert layout.pack_attributes(packet) == b"\x07\x00\xfe\xff"
    assert layout.unpack(b"\x07\x00\xfe\xff") == (-2,)
    single = Layout("struct one", ("count", "I"))
    assert single.pack_attributes(SimpleNamespace(count=5)) == b"\x05\x00\x00\x00"
    with pytest.raises(ValueError, match="struct one: value out of range"):
        single.pack(-1)
