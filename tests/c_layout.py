"""Reading what tests/c/*_layout.c programs print, and comparing it with a Python module.

A layout program prints offsetof/sizeof/signedness of every struct member a codec covers
and the value of every macro it mirrors (tests/c/layout_print.h); `layout_mismatches`
and `python_constants` put the Python side beside it.
"""

import enum
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

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
