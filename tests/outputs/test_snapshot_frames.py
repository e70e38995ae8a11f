"""A snapshot is one frame, even of a guest flipping as fast as it can.

The guest (tests/flipping_guest.py) redraws each of its two buffers with the other of
two full-frame patterns every time it flips back to it, so a copy taken while it draws
is a mix of the two. Before the planes server copied frames under the registry's frames
lock, 7 to 20 snapshots in a hundred of this guest were such a mix (68 of 1000 in this
test's run).
"""

from collections.abc import Iterator

import numpy as np
import pytest

import flipping_guest
import rigs
from pvdisplay.outputs import snapshot as snapshots
from pvdisplay.planes.client import PlaneClient

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]

SNAPSHOTS = 1000
FRAMES = 100
"""Distinct frames the snapshots must catch, of both pictures, however fast the guest
flips: snapshots go on until they have (pytest-timeout is the hang protection)."""
# Large enough that copying a frame takes longer than the guest takes to flip twice.
WIDTH, HEIGHT = 1024, 768


@pytest.fixture
def world() -> Iterator[rigs.Rig]:
    with rigs.backend_world(rigs.Rig) as rig:
        yield rig


def test_every_snapshot_of_a_flipping_guest_is_one_of_its_two_frames(world: rigs.Rig) -> None:
    guest = world.start_guest(flipping_guest.ENTRY, vkb="backend=0", resolution=f"{WIDTH}x{HEIGHT}")
    pictures = flipping_guest.expected_pictures(WIDTH, HEIGHT)
    mixed, seen = 0, [0, 0]
    frames: set[int] = set()
    with PlaneClient(world.planes_socket) as client:
        rigs.wait_until(
            lambda: any(p.domid == guest.domid and p.fb_cookie for p in client.list()),
            "the guest's first frame",
        )
        guest("flip")
        taken = 0
        while not mixed and (taken < SNAPSHOTS or len(frames) < FRAMES or min(seen) == 0):
            taken += 1
            shot = snapshots.take(client, guest.domid, 0)
            frames.add(shot.plane.frame)
            matches = [np.array_equal(shot.rgb, picture) for picture in pictures]
            if any(matches):
                seen[matches.index(True)] += 1
            else:
                mixed += 1
    guest("stop")
    # The guest really flipped under the snapshots: the loop went on until they caught
    # many frames, of both pictures.
    assert mixed == 0, f"{mixed} of {taken} snapshots mixed two frames"
