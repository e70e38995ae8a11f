"""The displif and kbdif codecs' layouts and constants against the compiled C headers.

tests/c/{displif,kbdif}_layout.c print offsetof/sizeof/signedness of every
member the codecs cover and the value of every macro they mirror; the Python
side is read from each codec's own `struct.Struct`-derived `LAYOUTS` and module
constants, so both directions must agree: nothing on either side goes unchecked.
The last test pins down what `Layout` itself promises the codecs.
"""

import enum
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from pvdisplay.wire import displif, kbdif
from pvdisplay.wire.layout import Field, Layout

# gref[] is a flexible array, so sizeof() covers one element; the codec packs the
# whole directory page.
WHOLE_PAGE_TYPES = {"struct xendispl_page_directory"}

CFieldKey = tuple[str, str]
CField = tuple[int, int, bool]


@dataclass
class CReport:
    fields: dict[CFieldKey, CField] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    constants: dict[str, int | str] = field(default_factory=dict)


def run_c_report(binary: Path) -> CReport:
    report = CReport()
    output = subprocess.run([binary], check=True, capture_output=True, text=True).stdout
    for line in output.splitlines():
        kind, *rest = line.split("\t")
        if kind == "field":
            c_type, path, offset, size, signed = rest
            report.fields[(c_type, path)] = (int(offset), int(size), signed == "1")
        elif kind == "sizeof":
            report.sizes[rest[0]] = int(rest[1])
        elif kind == "int":
            report.constants[rest[0]] = int(rest[1])
        else:
            assert kind == "str", line
            report.constants[rest[0]] = rest[1]
    return report


def layout_mismatches(module: ModuleType, report: CReport) -> list[str]:
    """Every disagreement between a codec module's layouts and the C report."""
    problems: list[str] = []
    python_fields: dict[CFieldKey, CField] = {}
    for layout in module.LAYOUTS:
        expected_size = report.sizes.get(layout.c_type)
        if layout.c_type in WHOLE_PAGE_TYPES:
            expected_size = int(report.constants["PAGE_SIZE"])
        if layout.struct.size != expected_size:
            problems.append(
                f"{layout.c_type}: Python {layout.struct.size} bytes, C {expected_size}"
            )
        for path, spec in layout.fields.items():
            position = (spec.offset, spec.size, spec.signed)
            if python_fields.setdefault((layout.c_type, path), position) != position:
                problems.append(f"{layout.c_type} {path}: Python layouts disagree")
    for key in sorted(python_fields.keys() | report.fields.keys()):
        python, c = python_fields.get(key), report.fields.get(key)
        if python != c:
            problems.append(f"{key[0]} {key[1]} (offset, size, signed): Python {python}, C {c}")
    return problems


def python_constants(module: ModuleType) -> dict[str, int | str]:
    """The module's public int/str constants and enum members, by dotted name."""
    found: dict[str, int | str] = {}
    for name, value in vars(module).items():
        if isinstance(value, type) and issubclass(value, enum.IntEnum):
            if value.__module__ == module.__name__:
                found.update({f"{name}.{m.name}": m.value for m in value})
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*", name) and isinstance(value, int | str):
            found[name] = value
    return found


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
