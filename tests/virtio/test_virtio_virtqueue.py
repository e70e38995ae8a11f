"""Split virtqueues against a guest driver written from the virtio 1.x spec (section 2.7).

`Driver` lays out the rings and buffers in a bytearray-backed guest memory map and
plays the guest: it publishes chains in the available ring and reads answers from the
used ring. The fuzz tests then let hypothesis write the rings instead.
"""

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay.virtio import VirtioError
from pvdisplay.virtio.memory import GuestMemoryMap, Region
from pvdisplay.virtio.virtqueue import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    Chain,
    Virtqueue,
)

RAM_BASE = 0x4000_0000
RAM_SIZE = 0x40000
DESC = struct.Struct("<QIHH")


@dataclass(frozen=True)
class Buffer:
    """A guest buffer the driver allocated: where it is and how long."""

    addr: int
    length: int


class Driver:
    """The guest side of one split virtqueue, in its own guest RAM."""

    def __init__(self, size: int = 8, event_idx: bool = False) -> None:
        self.size = size
        self.ram = bytearray(RAM_SIZE)
        self.memory = GuestMemoryMap([Region(RAM_BASE, RAM_SIZE, 0x7F00_0000_0000, self.ram)])
        self.desc_addr = RAM_BASE
        self.avail_addr = self.desc_addr + 16 * size
        self.used_addr = (self.avail_addr + 6 + 2 * size + 3) & ~3
        self.heap = (self.used_addr + 6 + 8 * size + 15) & ~15
        self.avail_idx = 0
        self.used_seen = 0
        self.next_free = 0
        self.event_idx = event_idx

    def queue(self, next_avail: int = 0) -> Virtqueue:
        return Virtqueue(
            self.memory,
            self.size,
            self.desc_addr,
            self.avail_addr,
            self.used_addr,
            event_idx=self.event_idx,
            next_avail=next_avail,
        )

    def offset(self, gpa: int) -> int:
        return gpa - RAM_BASE

    def alloc(self, data: bytes | int) -> Buffer:
        """A buffer holding `data`, or `data` zero bytes."""
        payload = bytes(data) if isinstance(data, int) else data
        buffer = Buffer(self.heap, len(payload))
        self.ram[self.offset(self.heap) : self.offset(self.heap) + len(payload)] = payload
        self.heap = (self.heap + len(payload) + 15) & ~15
        assert self.offset(self.heap) < RAM_SIZE
        return buffer

    def write_desc(self, table: int, index: int, desc: tuple[int, int, int, int]) -> None:
        """Store descriptor `index` of `table`: (addr, len, flags, next)."""
        DESC.pack_into(self.ram, self.offset(table) + 16 * index, *desc)

    def add(self, readable: list[bytes], writable: list[int], indirect: bool = False) -> int:
        """Publish a chain: readable buffers holding `readable`, then writable ones."""
        parts = [(self.alloc(d), 0) for d in readable]
        parts += [(self.alloc(n), VRING_DESC_F_WRITE) for n in writable]
        head = self.next_free
        if indirect:
            table = self.alloc(16 * len(parts))
            self.link(table.addr, 0, parts)
            descriptor = (table.addr, table.length, VRING_DESC_F_INDIRECT, 0)
            self.write_desc(self.desc_addr, head, descriptor)
            self.next_free = (head + 1) % self.size
        else:
            self.link(self.desc_addr, head, parts)
            self.next_free = (head + len(parts)) % self.size
        self.publish(head)
        return head

    def link(self, table: int, first: int, parts: list[tuple[Buffer, int]]) -> None:
        for n, (buffer, direction) in enumerate(parts):
            index = (first + n) % self.size if table == self.desc_addr else first + n
            last = n == len(parts) - 1
            nxt = 0 if last else (index + 1) % self.size if table == self.desc_addr else index + 1
            flags = direction | (0 if last else VRING_DESC_F_NEXT)
            self.write_desc(table, index, (buffer.addr, buffer.length, flags, nxt))

    def publish(self, head: int) -> None:
        slot = self.offset(self.avail_addr) + 4 + 2 * (self.avail_idx % self.size)
        struct.pack_into("<H", self.ram, slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        struct.pack_into("<H", self.ram, self.offset(self.avail_addr) + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        struct.pack_into("<H", self.ram, self.offset(self.avail_addr), flags)

    def set_used_event(self, value: int) -> None:
        struct.pack_into("<H", self.ram, self.offset(self.avail_addr) + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        value: int = struct.unpack_from(
            "<H", self.ram, self.offset(self.used_addr) + 4 + 8 * self.size
        )[0]
        return value

    def used(self) -> list[tuple[int, int]]:
        """Used elements (id, len) the device added since the last call."""
        used_idx: int = struct.unpack_from("<H", self.ram, self.offset(self.used_addr) + 2)[0]
        out = []
        while self.used_seen != used_idx:
            slot = self.offset(self.used_addr) + 4 + 8 * (self.used_seen % self.size)
            out.append(struct.unpack_from("<II", self.ram, slot))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def read(self, buffer: Buffer) -> bytes:
        return bytes(self.ram[self.offset(buffer.addr) : self.offset(buffer.addr) + buffer.length])


def answer(queue: Virtqueue, chain: Chain, data: bytes) -> None:
    queue.push(chain, chain.write(data))


@pytest.mark.parametrize("indirect", [False, True])
def test_request_and_answer_round_trip(indirect: bool) -> None:
    driver = Driver()
    queue = driver.queue()
    head = driver.add([b"hello ", b"device"], [3, 8], indirect=indirect)
    chain = queue.pop()
    assert chain is not None and chain.head == head
    assert chain.read() == b"hello device"
    assert chain.read(limit=8) == b"hello de"
    assert (chain.readable_length, chain.writable_length) == (12, 11)
    assert queue.in_flight == 1
    answer(queue, chain, b"reply")
    assert queue.pop() is None
    assert driver.used() == [(head, 5)]
    assert queue.in_flight == 0


def test_readable_views_cannot_write_guest_memory() -> None:
    driver = Driver()
    queue = driver.queue()
    driver.add([b"request"], [])
    chain = queue.pop()
    assert chain is not None
    with pytest.raises(TypeError):
        chain.readable[0][0] = 0


def test_answer_is_cut_to_the_writable_buffers() -> None:
    driver = Driver()
    queue = driver.queue()
    driver.add([b"q"], [2, 2])
    chain = queue.pop()
    assert chain is not None
    assert chain.write(b"abcdef") == 4
    queue.push(chain, 4)
    with pytest.raises(ValueError, match="not in flight"):
        queue.push(chain, 0)


def test_push_refuses_more_than_the_chain_holds() -> None:
    driver = Driver()
    queue = driver.queue()
    driver.add([b"q"], [4])
    chain = queue.pop()
    assert chain is not None
    with pytest.raises(ValueError, match="wrote 5 bytes into 4"):
        queue.push(chain, 5)


def test_indices_wrap_at_16_bits() -> None:
    driver = Driver(size=8)
    driver.avail_idx = driver.used_seen = 0xFFFE
    struct.pack_into("<H", driver.ram, driver.offset(driver.used_addr) + 2, 0xFFFE)
    queue = driver.queue(next_avail=0xFFFE)
    heads = [driver.add([bytes([n])], [1]) for n in range(4)]
    for n in range(4):
        chain = queue.pop()
        assert chain is not None and chain.read() == bytes([n])
        answer(queue, chain, b"!")
    assert queue.next_avail == 2
    assert driver.used() == [(h, 1) for h in heads]


def corrupt(driver: Driver, head: int, **changes: int) -> None:
    """Rewrite one field of a direct descriptor after the driver published it."""
    offset = driver.offset(driver.desc_addr) + 16 * head
    addr, length, flags, nxt = DESC.unpack_from(driver.ram, offset)
    values = {"addr": addr, "length": length, "flags": flags, "nxt": nxt} | changes
    DESC.pack_into(
        driver.ram, offset, values["addr"], values["length"], values["flags"], values["nxt"]
    )


BAD_CHAINS = {
    "address outside RAM": lambda d, h: corrupt(d, h, addr=RAM_BASE + RAM_SIZE - 2),
    "address below RAM": lambda d, h: corrupt(d, h, addr=0x1000),
    "length past RAM": lambda d, h: corrupt(d, h, length=RAM_SIZE),
    "loop": lambda d, h: corrupt(d, h, flags=VRING_DESC_F_NEXT, nxt=h),
    "next outside the table": lambda d, h: corrupt(d, h, flags=VRING_DESC_F_NEXT, nxt=d.size),
    "readable after writable": lambda d, h: corrupt(
        d, h, flags=VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, nxt=(h + 2) % d.size
    ),
    "indirect with next": lambda d, h: corrupt(
        d, h, flags=VRING_DESC_F_INDIRECT | VRING_DESC_F_NEXT
    ),
    "empty indirect table": lambda d, h: corrupt(d, h, flags=VRING_DESC_F_INDIRECT, length=0),
    "ragged indirect table": lambda d, h: corrupt(d, h, flags=VRING_DESC_F_INDIRECT, length=24),
    "huge indirect table": lambda d, h: corrupt(
        d, h, flags=VRING_DESC_F_INDIRECT, length=16 * 2048
    ),
}


@pytest.mark.parametrize("damage", BAD_CHAINS.values(), ids=BAD_CHAINS.keys())
def test_a_bad_chain_fails_alone(damage: object) -> None:
    driver = Driver()
    queue = driver.queue()
    bad = driver.add([b"bad"], [4])
    good = driver.add([b"good"], [4])
    damage(driver, bad)  # type: ignore[operator]
    chain = queue.pop()
    assert chain is not None and chain.head == good and chain.read() == b"good"
    answer(queue, chain, b"ok")
    assert driver.used() == [(bad, 0), (good, 2)]
    assert queue.broken is None


def test_nested_indirect_table_is_refused() -> None:
    driver = Driver()
    queue = driver.queue()
    head = driver.add([b"x"], [4], indirect=True)
    table, _, _, _ = DESC.unpack_from(driver.ram, driver.offset(driver.desc_addr) + 16 * head)
    driver.write_desc(table, 0, (table, 32, VRING_DESC_F_INDIRECT, 0))
    assert queue.pop() is None
    assert driver.used() == [(head, 0)]


def test_indirect_loop_is_refused() -> None:
    driver = Driver()
    queue = driver.queue()
    head = driver.add([b"x", b"y"], [], indirect=True)
    table, _, _, _ = DESC.unpack_from(driver.ram, driver.offset(driver.desc_addr) + 16 * head)
    driver.write_desc(table, 1, (table, 1, VRING_DESC_F_NEXT, 0))
    assert queue.pop() is None
    assert driver.used() == [(head, 0)]


def test_a_head_already_in_flight_is_not_served_twice() -> None:
    driver = Driver()
    queue = driver.queue()
    head = driver.add([b"x"], [1])
    driver.publish(head)
    first = queue.pop()
    assert first is not None
    assert queue.pop() is None
    answer(queue, first, b"1")
    assert driver.used() == [(head, 1)]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: struct.pack_into("<H", d.ram, d.offset(d.avail_addr) + 2, d.size + 1), "ahead"),
        (lambda d: d.publish(d.size), "outside a queue"),
    ],
)
def test_a_corrupt_ring_breaks_the_queue(damage: object, reason: str) -> None:
    driver = Driver()
    queue = driver.queue()
    damage(driver)  # type: ignore[operator]
    with pytest.raises(VirtioError, match=reason):
        queue.pop()
    assert queue.broken is not None and reason in queue.broken
    with pytest.raises(VirtioError):
        queue.pop()


@pytest.mark.parametrize(
    ("size", "desc", "avail", "used"),
    [
        (3, RAM_BASE, RAM_BASE + 0x100, RAM_BASE + 0x200),  # not a power of two
        (0, RAM_BASE, RAM_BASE + 0x100, RAM_BASE + 0x200),
        (65536, RAM_BASE, RAM_BASE + 0x100, RAM_BASE + 0x200),
        (8, RAM_BASE + 8, RAM_BASE + 0x100, RAM_BASE + 0x200),  # misaligned table
        (8, RAM_BASE, RAM_BASE + 0x101, RAM_BASE + 0x200),
        (8, RAM_BASE, RAM_BASE + 0x100, RAM_BASE + 0x202),
        (8, RAM_BASE + RAM_SIZE - 64, RAM_BASE, RAM_BASE + 0x200),  # table runs off RAM
        (8, RAM_BASE, RAM_BASE + 0x100, 0x1000),  # used ring not in RAM
    ],
)
def test_bad_ring_geometry_is_refused(size: int, desc: int, avail: int, used: int) -> None:
    driver = Driver()
    with pytest.raises(VirtioError):
        Virtqueue(driver.memory, size, desc, avail, used)


def test_notification_without_event_idx_follows_no_interrupt() -> None:
    driver = Driver()
    queue = driver.queue()
    assert not queue.should_notify()  # nothing used yet
    driver.add([b"a"], [1])
    chain = queue.pop()
    assert chain is not None
    answer(queue, chain, b"x")
    assert queue.should_notify()
    assert not queue.should_notify()  # already signalled
    driver.set_avail_flags(VRING_AVAIL_F_NO_INTERRUPT)
    driver.add([b"b"], [1])
    chain = queue.pop()
    assert chain is not None
    answer(queue, chain, b"y")
    assert not queue.should_notify()


def test_event_idx_publishes_avail_event_and_honours_used_event() -> None:
    driver = Driver(event_idx=True)
    queue = driver.queue()
    driver.set_used_event(1)  # "interrupt me once the second answer is used"
    for n in range(3):
        driver.add([bytes([n])], [1])
    first = queue.pop()
    assert first is not None
    assert driver.avail_event() == 1
    answer(queue, first, b"0")
    assert not queue.should_notify()
    second = queue.pop()
    assert second is not None
    answer(queue, second, b"1")
    assert queue.should_notify()
    third = queue.pop()
    assert third is not None
    assert queue.pop() is None
    assert driver.avail_event() == 3
    answer(queue, third, b"2")
    assert not queue.should_notify()  # used_event 1 already passed


# Fuzzing: hypothesis writes the guest's side of the rings.

ADDRESSES = st.one_of(
    st.integers(RAM_BASE, RAM_BASE + RAM_SIZE),
    st.sampled_from([0, RAM_BASE - 1, RAM_BASE + RAM_SIZE - 1, (1 << 64) - 1]),
)
LENGTHS = st.one_of(st.integers(0, 64), st.sampled_from([0xFFFF_FFFF, RAM_SIZE, 16, 32, 48]))
DESCRIPTORS = st.tuples(ADDRESSES, LENGTHS, st.integers(0, 7), st.integers(0, 9))


@given(
    size=st.sampled_from([1, 2, 8]),
    descriptors=st.lists(DESCRIPTORS, min_size=8, max_size=8),
    indirect_tables=st.lists(st.lists(DESCRIPTORS, min_size=1, max_size=4), max_size=3),
    heads=st.lists(st.integers(0, 9), max_size=12),
    avail_idx=st.one_of(st.none(), st.integers(0, 0xFFFF)),
    event_idx=st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_fuzzed_rings_answer_every_request_or_break_cleanly(
    *,
    size: int,
    descriptors: list[tuple[int, int, int, int]],
    indirect_tables: list[list[tuple[int, int, int, int]]],
    heads: list[int],
    avail_idx: int | None,
    event_idx: bool,
) -> None:
    driver = Driver(size=size, event_idx=event_idx)
    # Indirect tables sit at fixed places the random descriptors may point at.
    for table in indirect_tables:
        place = driver.alloc(16 * len(table))
        for n, fields in enumerate(table):
            driver.write_desc(place.addr, n, fields)
    for index, fields in enumerate(descriptors[:size]):
        driver.write_desc(driver.desc_addr, index, fields)
    for head in heads:
        driver.publish(head)
    if avail_idx is not None:
        struct.pack_into("<H", driver.ram, driver.offset(driver.avail_addr) + 2, avail_idx)
    queue = driver.queue()
    served = 0
    try:
        while (chain := queue.pop()) is not None:
            served += 1
            assert served <= size * 4
            for view in chain.readable + chain.writable:
                assert len(view) <= RAM_SIZE
            answer(queue, chain, b"\xa5" * 8)
    except VirtioError:
        assert queue.broken is not None
        return
    assert queue.broken is None
    # Every request consumed from the ring was answered, well-formed or not.
    assert len(driver.used()) == queue.next_avail


@given(ring=st.binary(min_size=512, max_size=512), event_idx=st.booleans())
@settings(max_examples=200, deadline=None)
def test_random_ring_bytes_never_escape_the_error_path(ring: bytes, event_idx: bool) -> None:
    driver = Driver(size=8, event_idx=event_idx)
    driver.ram[: len(ring)] = ring
    queue = driver.queue()
    try:
        for _ in range(32):
            chain = queue.pop()
            if chain is None:
                break
            answer(queue, chain, bytes(chain.writable_length))
    except VirtioError:
        assert queue.broken is not None
