"""The display service's turn on one ring: at most a ring's worth of requests per wake-up.

A frontend may publish a request just after the backend found its ring empty and before
the backend's final check. Between two processes that moment cannot be produced on
demand, so here the frontend shares the backend's memory and its final check lets the
frontend in each time: the shape of a guest that keeps the backend busy by refilling its
ring exactly as it runs dry.
"""

from types import SimpleNamespace
from typing import Any, cast

from pvdisplay.display import service
from pvdisplay.display.backend import DisplayDevice, Reply
from pvdisplay.planes.model import PlaneRegistry
from pvdisplay.wire import displif
from pvdisplay.wire.ring import BackRing, FrontRing, init_shared_ring

REQ_PORT, EVT_PORT = 5, 6


class RefilledRing(BackRing):
    """A back ring whose frontend publishes one more request at each final check."""

    def __init__(self, area: memoryview, front: FrontRing, refills: int) -> None:
        super().__init__(area, displif.REQUEST_SIZE)
        self.front = front
        self.refills = refills

    def final_check_for_requests(self) -> bool:
        if self.refills:
            self.refills -= 1
            post(self.front, 1)
        return super().final_check_for_requests()


def post(front: FrontRing, count: int) -> None:
    while front.take_response() is not None:
        pass
    for _ in range(count):
        front.new_request()[:] = displif.PageFlip(0, 1).encode()
    front.push_requests()


class CountingCore:
    """Stands in for `DisplayDevice`: answers every request with status 0."""

    def __init__(self) -> None:
        self.handled = 0

    def handle(self, connector: int, slot: bytes) -> Reply:
        self.handled += 1
        header = displif.decode_request_header(slot)
        return Reply(displif.Response(header.id, header.operation, 0).encode())


def test_a_ring_refilled_whenever_it_runs_dry_gets_one_ring_s_worth_a_turn() -> None:
    area = memoryview(bytearray(4096))
    init_shared_ring(area)
    front = FrontRing(area, displif.REQUEST_SIZE)
    ring = RefilledRing(area, front, refills=3 * 32)
    notified: list[int] = []
    hv = SimpleNamespace(domid=0, events=SimpleNamespace(notify=notified.append))
    backend = service.BackendService(
        cast(Any, hv), cast(Any, None), PlaneRegistry(), copy_frames=False
    )
    core = CountingCore()
    device = service._Device(1, 0, "/local/domain/0/backend/vdispl/1/0")
    device.core = cast(DisplayDevice, core)
    unused = cast(Any, None)
    channel = service._Channel(
        0, ring, area, unused, unused, unused, unused, REQ_PORT, EVT_PORT, 0, 0
    )
    device.channels.append(channel)

    post(front, 3)
    backend._service(device, channel)
    assert ring.size == 32
    assert core.handled == ring.size
    assert notified == [REQ_PORT]  # the answers went out
    # The frontend still has requests to publish; they wait for the next turn.
    assert ring.refills > 0
    backend._service(device, channel)
    assert core.handled == 2 * ring.size
