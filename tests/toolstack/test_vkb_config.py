"""xl.cfg vkb strings and the XenStore nodes written for them."""

import pytest

from pvdisplay import toolstack
from pvdisplay.toolstack.vkb import parse_xl_vkb, vkb_nodes

SCREEN = toolstack.Vdispl(0, 0, False, (toolstack.Connector("id0", 1920, 1080),))


def values(plan: toolstack.NodePlan) -> dict[str, str]:
    return {write.path: write.value for write in plan.writes}


def test_multi_touch_device_binds_to_its_connector_and_writes_sizes_with_the_device() -> None:
    device = parse_xl_vkb(
        "backend=0,feature-abs-pointer=1,feature-multi-touch=1,multi-touch-num-contacts=5,"
        "unique-id=id0",
        0,
        "vkb[0]",
        {},
        0,
    )
    nodes = values(vkb_nodes(3, device, [SCREEN]))
    back = "/local/domain/0/backend/vkbd/3/0"
    assert {k: v for k, v in nodes.items() if k.startswith(back + "/")} == {
        f"{back}/frontend": "/local/domain/3/device/vkbd/0",
        f"{back}/frontend-id": "3",
        f"{back}/online": "1",
        f"{back}/state": "1",
        f"{back}/unique-id": "id0",
        f"{back}/feature-abs-pointer": "1",
        f"{back}/feature-multi-touch": "1",
        f"{back}/multi-touch-width": "1920",
        f"{back}/multi-touch-height": "1080",
        f"{back}/multi-touch-num-contacts": "5",
        f"{back}/width": "1920",
        f"{back}/height": "1080",
    }
    assert nodes["/local/domain/3/device/vkbd/0/backend"] == back
    assert nodes["/local/domain/3/device/vkbd/0/state"] == "1"


def test_a_linux_backend_type_puts_the_backend_under_vinput_as_libxl_does() -> None:
    device = parse_xl_vkb("backend=0,backend-type=linux,unique-id=id0", 1, "vkb", {}, 0)
    nodes = values(vkb_nodes(3, device, [SCREEN]))
    back = "/local/domain/0/backend/vinput/3/1"
    assert nodes["/local/domain/3/device/vkbd/1/backend"] == back
    assert nodes[f"{back}/frontend"] == "/local/domain/3/device/vkbd/1"
    assert not any("/backend/vkbd/" in path for path in nodes)
    qemu = parse_xl_vkb("backend=0,backend-type=qemu,unique-id=id0", 1, "vkb", {}, 0)
    assert "/local/domain/0/backend/vkbd/3/1/state" in values(vkb_nodes(3, qemu, [SCREEN]))
    assert toolstack.guest_teardown_paths(3, [], [device])[:2] == (
        back,
        "/local/domain/3/device/vkbd/1",
    )


def test_explicit_sizes_win_and_backend_may_be_named() -> None:
    device = parse_xl_vkb(
        "backend=dd,unique-id=id0,width=800,height=600,feature-multi-touch=1,"
        "multi-touch-width=100,multi-touch-height=50",
        1,
        "vkb[1]",
        {"dd": 4},
        0,
    )
    nodes = values(vkb_nodes(3, device, [SCREEN]))
    back = "/local/domain/4/backend/vkbd/3/1"
    assert (nodes[f"{back}/width"], nodes[f"{back}/height"]) == ("800", "600")
    assert (nodes[f"{back}/multi-touch-width"], nodes[f"{back}/multi-touch-height"]) == (
        "100",
        "50",
    )
    assert nodes[f"{back}/multi-touch-num-contacts"] == "10"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("backend=0,colour=blue", "vkb.colour"),
        ("feature-abs-pointer=yes", "vkb.feature-abs-pointer"),
        ("width=-1", "vkb.width"),
        ("multi-touch-num-contacts=300", "vkb.multi-touch-num-contacts"),
        ("unique-id=a;b", "vkb.unique-id"),
        ("backend=nowhere", "vkb.backend"),
        ("backend", "vkb"),
        ("width=1,width=2", "vkb.width"),
        ("feature-raw-pointer=1", "vkb.feature-raw-pointer"),
        ("backend-type=ioemu", "vkb.backend-type"),
    ],
)
def test_mistakes_name_the_setting(text: str, where: str) -> None:
    with pytest.raises(toolstack.ConfigError) as raised:
        parse_xl_vkb(text, 0, "vkb", {}, 0)
    assert raised.value.key == where


@pytest.mark.parametrize(
    ("vdispls", "size"),
    [
        ([toolstack.Vdispl(0, 0, False, (toolstack.Connector("a", 320, 240),)), SCREEN], "320x240"),
        ([], "800x600"),
    ],
)
def test_a_device_without_unique_id_takes_the_first_connectors_size_never_zero(
    vdispls: list[toolstack.Vdispl], size: str
) -> None:
    """A frontend reads every size while it probes, before the backend could write any."""
    device = parse_xl_vkb("feature-abs-pointer=1,feature-multi-touch=1", 0, "vkb", {}, 0)
    nodes = values(vkb_nodes(3, device, vdispls))
    back = "/local/domain/0/backend/vkbd/3/0"
    width, height = size.split("x")
    assert (nodes[f"{back}/width"], nodes[f"{back}/height"]) == (width, height)
    assert (nodes[f"{back}/multi-touch-width"], nodes[f"{back}/multi-touch-height"]) == (
        width,
        height,
    )
