"""A coverage-guided fuzzer for the sans-IO cores: displif requests and kbdif events.

atheris has no wheel for this Python, so the guidance is our own, and modest: an input
is a short sequence of structured steps (displif requests whose fields come from a
dictionary of values that matter, or kbdif output events and guest writes to the event
page); inputs are mutated from a corpus, and an input joins the corpus when it executes
a line-to-line arc of the target modules that no input executed before. Arcs are
collected with `sys.settrace` on one input in `SAMPLE` (tracing every input would make
10^6 requests take minutes), so guidance sees a sample of what runs, and every input is
still executed and checked.

A crash is any exception but the protocol errors the cores define; a hang is an input
still running after `HANG_SECONDS` (SIGALRM), a bound so far above the milliseconds an
input takes that only a loop that never ends reaches it, however loaded the machine.
`fuzz` takes over SIGALRM and the tracer of its process: it runs in a domain of its own.

The displif target is a `DisplayDevice` with the real hypervisor of the domain it runs
in: the frontend is the same domain, granting its own pages, so page directories, grant
maps and exports are real calls to the broker.
"""

import functools
import random
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import CodeType, FrameType
from typing import Any

from pvdisplay.display import backend as display_backend
from pvdisplay.display.backend import ConnectorConfig, DisplayDevice, FrontendConfig
from pvdisplay.hv import GuestMemory, Hypervisor
from pvdisplay.input import backend as input_backend
from pvdisplay.input import backlog as input_backlog
from pvdisplay.planes import input_events
from pvdisplay.planes.model import PlaneRegistry
from pvdisplay.wire import displif, fourcc, kbdif
from pvdisplay.wire.errors import ProtocolError

SAMPLE = 16
"""One input in this many is traced for coverage (a traced input costs several untraced)."""
HANG_SECONDS = 60
MAX_STEPS = 8
Step = tuple[int, ...]
Input = list[Step]


@dataclass
class Report:
    units: int = 0
    """Requests (displif) or events (kbdif) executed."""
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    arcs: int = 0
    corpus: int = 0
    first_crash: str = ""
    statuses: dict[int, int] = field(default_factory=dict)


class _HangError(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise _HangError


class Coverage:
    """Line-to-line arcs executed in the target modules' files."""

    def __init__(self, modules: list[Any]) -> None:
        self.files = {module.__file__ for module in modules}
        self.seen: set[tuple[CodeType, int, int]] = set()

    def run(self, execute: Callable[[], None]) -> bool:
        """Run `execute` traced; True if it reached an arc never reached before."""
        arcs: set[tuple[CodeType, int, int]] = set()
        files = self.files

        def tracer(frame: FrameType, event: str, arg: object) -> Any:
            if frame.f_code.co_filename not in files:
                return None
            code, last = frame.f_code, frame.f_lineno

            def local(frame: FrameType, event: str, arg: object) -> Any:
                nonlocal last
                if event == "line":
                    arcs.add((code, last, frame.f_lineno))
                    last = frame.f_lineno
                return local

            return local

        sys.settrace(tracer)
        try:
            execute()
        finally:
            sys.settrace(None)
        new = arcs - self.seen
        self.seen |= new
        return bool(new)


def fuzz(target: "Target", units: int, seed: int, modules: list[Any]) -> Report:
    """Execute inputs until `units` requests or events have run."""
    rng = random.Random(seed)
    coverage = Coverage(modules)
    corpus: list[Input] = [[target.generate(rng)]]
    report = Report()
    signal.signal(signal.SIGALRM, _alarm)
    while report.units < units:
        if rng.random() < 0.1:
            candidate = [target.generate(rng) for _ in range(rng.randint(1, MAX_STEPS))]
        else:
            candidate = _mutate(target, rng, rng.choice(corpus), corpus)
        traced = report.inputs % SAMPLE == 0
        signal.alarm(HANG_SECONDS)
        try:
            if traced:
                if coverage.run(functools.partial(target.execute, candidate, report)):
                    corpus.append(candidate)
            else:
                target.execute(candidate, report)
        except _HangError:
            report.hangs += 1
            target.reset()
        except Exception:
            report.crashes += 1
            report.first_crash = report.first_crash or traceback.format_exc(limit=-3)
            target.reset()
        finally:
            signal.alarm(0)
        report.inputs += 1
    report.arcs, report.corpus = len(coverage.seen), len(corpus)
    return report


def _mutate(target: "Target", rng: random.Random, parent: Input, corpus: list[Input]) -> Input:
    child = list(parent)
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(5)
        if choice == 0 and len(child) < MAX_STEPS:
            child.insert(rng.randrange(len(child) + 1), target.generate(rng))
        elif choice == 1 and len(child) > 1:
            del child[rng.randrange(len(child))]
        elif choice == 2:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            child = (child + other[cut:])[:MAX_STEPS]
        else:
            index = rng.randrange(len(child))
            child[index] = target.mutate_step(rng, child[index])
    return child


class Target:
    def generate(self, rng: random.Random) -> Step:
        raise NotImplementedError

    def mutate_step(self, rng: random.Random, step: Step) -> Step:
        raise NotImplementedError

    def execute(self, steps: Input, report: Report) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


def _interesting(rng: random.Random, dictionary: list[int], bits: int) -> int:
    roll = rng.random()
    if roll < 0.6:
        return rng.choice(dictionary)
    if roll < 0.8:
        return (rng.choice(dictionary) + rng.choice((-1, 1, 4096, -4096))) % (1 << bits)
    return rng.getrandbits(bits)


_OPERATIONS = [int(op) for op in displif.Operation]
_LAYOUTS = {
    int(cls.operation): [
        (f.offset, f.size) for name, f in cls.LAYOUT.fields.items() if name.startswith("op.")
    ]
    for cls in (
        displif.DbufCreate, displif.DbufDestroy, displif.FbAttach, displif.FbDetach,
        displif.SetConfig, displif.PageFlip, displif.GetEdid,
    )
}  # fmt: skip
_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
CONNECTORS = ((64, 48), (320, 200))
FRESH_DEVICE_EVERY = 64
"""Inputs run on one device before it is closed and made anew: state carries over
between inputs, and inputs also meet an empty device."""


class DisplayTarget(Target):
    """Steps are (connector, operation, field values...) on one device, recreated when
    it closes; the dictionary holds the device's modes, real page directories, cookies,
    fourccs and sizes, so a mutated step is often a request that gets far."""

    def __init__(self, hv: Hypervisor) -> None:
        self.hv = hv
        self.planes = PlaneRegistry()
        self.memory: list[GuestMemory] = []
        directories = [self._directory(pages) for pages in (1, 2, 15, 20, 600)]
        sizes = [64 * 48 * 4, 320 * 200 * 4, 4096, 8192, 600 * 4096, 1 << 20]
        self.dictionary = sorted(
            {0, 1, 2, 3, 7, 16, 24, 32, 48, 64, 200, 320, 0xFFFFFFFF, 1 << 31}
            | set(directories)
            | set(sizes)
            | {f.fourcc for f in fourcc.FORMATS}
        )
        self.device = self._new_device()

    def _directory(self, pages: int) -> int:
        own = self.hv.domid
        memory, refs = self.hv.grants.share(own, pages)
        dir_pages = displif.directory_pages_for(pages)
        directory, dir_refs = self.hv.grants.share(own, dir_pages)
        with directory.view() as view:
            for index, page in enumerate(displif.encode_page_directory(refs, dir_refs)):
                view[index * 4096 : (index + 1) * 4096] = page
        self.memory += [memory, directory]
        return dir_refs[0]

    def _new_device(self) -> DisplayDevice:
        connectors = tuple(
            ConnectorConfig(index, w, h, f"c{index}") for index, (w, h) in enumerate(CONNECTORS)
        )
        config = FrontendConfig(self.hv.domid, 0, connectors, be_alloc=True)
        return DisplayDevice(self.hv, config, self.planes, page_budget=2048, descriptor_budget=64)

    def generate(self, rng: random.Random) -> Step:
        operation = rng.choice(_OPERATIONS) if rng.random() < 0.95 else rng.randrange(256)
        fields = _LAYOUTS.get(operation, [(8, 8)])
        values = [_interesting(rng, self.dictionary, 8 * size) for _, size in fields]
        return (rng.choice((0, 0, 0, 1)), operation, *values)

    def mutate_step(self, rng: random.Random, step: Step) -> Step:
        if len(step) <= 2 or rng.random() < 0.2:
            return self.generate(rng)
        index = rng.randrange(2, len(step))
        fields = _LAYOUTS.get(step[1], [(8, 8)])
        size = fields[index - 2][1]
        return (*step[:index], _interesting(rng, self.dictionary, 8 * size), *step[index + 1 :])

    def execute(self, steps: Input, report: Report) -> None:
        for number, (connector, operation, *values) in enumerate(steps):
            slot = bytearray(displif.REQUEST_SIZE)
            struct.pack_into("<HB", slot, 0, number, operation)
            fields = _LAYOUTS.get(operation, [(8, 8)])
            for (offset, size), value in zip(fields, values, strict=True):
                struct.pack_into(_FORMATS[size], slot, offset, value)
            reply = self.device.handle(connector, bytes(slot))
            status = displif.decode_response(reply.response).status
            report.statuses[status] = report.statuses.get(status, 0) + 1
            report.units += 1
        if report.inputs % FRESH_DEVICE_EVERY == 0:
            self.reset()

    def reset(self) -> None:
        self.device.close()
        self.device = self._new_device()


_KINDS = ["key", "pointer", "wheel", "touch-down", "touch-move", "touch-up", "bogus"]
_KEYS = [0, 1, 30, 0x110, 0x14A, 0x2FF, 0xFFFFFFFF, -1, 2**31 - 1, -(2**31)]


class InputTarget(Target):
    """Steps are output events (as JSON the outputs send, garbage included), decoded and
    translated and pushed, or guest writes to the event page (indices, out events, bytes
    in slots), or the guest consuming; a device that raises ProtocolError is recreated, as
    the backend closes that keyboard."""

    def __init__(self) -> None:
        self.page = bytearray(4096)
        self.device = self._new_device()

    def _new_device(self) -> input_backend.InputDevice:
        self.page[:] = bytes(4096)
        features = input_backend.VkbdFeatures(
            "c0", 640, 480, abs_pointer=True, multi_touch=True, mt_width=640, mt_height=480,
            mt_contacts=4,
        )  # fmt: skip
        requests = input_backend.FrontendRequests(abs_pointer=True, multi_touch=True)
        return input_backend.InputDevice(features, requests, self.page)

    def generate(self, rng: random.Random) -> Step:
        roll = rng.random()
        values = [_interesting(rng, _KEYS, 32) - (1 << 31) * rng.randrange(2) for _ in range(3)]
        if roll < 0.7:
            return (0, rng.randrange(len(_KINDS)), rng.randrange(2), *values)
        if roll < 0.85:  # the guest consumes some of what was produced
            return (1, rng.randrange(kbdif.IN_RING_LEN + 2))
        return (2, rng.randrange(4096), rng.getrandbits(32), rng.randrange(4))

    def mutate_step(self, rng: random.Random, step: Step) -> Step:
        if rng.random() < 0.3:
            return self.generate(rng)
        index = rng.randrange(1, len(step))
        return (*step[:index], _interesting(rng, _KEYS, 32), *step[index + 1 :])

    def execute(self, steps: Input, report: Report) -> None:
        for step in steps:
            try:
                self._step(step, report)
            except ProtocolError as error:
                report.statuses[-error.errno] = report.statuses.get(-error.errno, 0) + 1
                self.reset()

    def _step(self, step: Step, report: Report) -> None:
        kind, *values = step
        if kind == 0:
            event = _event_json(_KINDS[values[0] % len(_KINDS)], *values[1:])
            report.units += 1
            decoded = input_events.from_json(event)
            translated = self.device.translate([decoded], 640, 480)
            self.device.push(translated)
            for index in range(len(translated)):
                kbdif.read_in_event(self.page, index)
        elif kind == 1:
            indices = kbdif.page_indices(self.page)
            try:
                cons = indices.load(kbdif.IN_CONS_OFFSET)
                prod = indices.load(kbdif.IN_PROD_OFFSET)
                indices.store(kbdif.IN_CONS_OFFSET, min(prod, cons + values[0]) & 0xFFFFFFFF)
            finally:
                indices.release()
            self.device.flush()
        else:
            offset, value, _ = values
            struct.pack_into("<I", self.page, offset % 4096 & ~3, value & 0xFFFFFFFF)
            report.units += 1
            self.device.flush()

    def reset(self) -> None:
        self.device.release()
        self.device = self._new_device()


def _event_json(kind: str, pressed: int, *numbers: int) -> dict[str, object]:
    if kind == "key":
        return {"type": kind, "code": numbers[0], "pressed": bool(pressed)}
    if kind == "pointer":
        return {"type": kind, "x": numbers[0], "y": numbers[1]}
    if kind == "wheel":
        return {"type": kind, "steps": numbers[0]}
    if kind.startswith("touch"):
        body: dict[str, object] = {"type": kind, "contact": numbers[0]}
        if kind != "touch-up":
            body |= {"x": numbers[1], "y": numbers[2]}
        return body
    return {"type": kind, "x": pressed}


DISPLAY_MODULES = [display_backend, displif]
INPUT_MODULES = [input_backend, input_backlog, input_events, kbdif]


def fuzz_display(hv: Hypervisor, control: Connection, units: str, seed: str) -> None:
    """Domain entry: fuzz a DisplayDevice of this domain, send the Report."""
    control.send(fuzz(DisplayTarget(hv), int(units), int(seed), DISPLAY_MODULES))


def fuzz_input(hv: Hypervisor, control: Connection, units: str, seed: str) -> None:
    """Domain entry: fuzz a kbdif InputDevice (no hypervisor needed), send the Report."""
    control.send(fuzz(InputTarget(), int(units), int(seed), INPUT_MODULES))
