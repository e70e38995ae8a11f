"""The toolstack: TOML and xl.cfg vdispl syntax in, libxl's XenStore nodes out."""

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvdisplay import backend_domain, toolstack
from pvdisplay.display import front
from pvdisplay.display.limits import DEFAULT_PAGE_BUDGET, MAX_BUFFER_SIZE
from pvdisplay.store.aio import AsyncClient
from pvdisplay.store.client import Client
from pvdisplay.store.permissions import Access, Permission
from pvdisplay.store.server import parse_quotas
from pvdisplay.toolstack import ConfigError, Connector, Vdispl, host
from pvdisplay.toolstack.host import apply_plan
from pvdisplay.toolstack.vkb import Vkb

pytestmark = pytest.mark.processes

DOMAINS = {"Domain-0": 0, "driver": 7}


def parse_xl(spec: str) -> Vdispl:
    return toolstack.parse_xl_vdispl(spec, 0, "vdispl[0]", DOMAINS, default_backend=0)


def test_xl_syntax_from_the_issue() -> None:
    device = parse_xl("backend=0,be-alloc=1,connectors=id0:1920x1080;id1:800x600")
    assert device == Vdispl(0, 0, True, (Connector("id0", 1920, 1080), Connector("id1", 800, 600)))


def test_xl_backend_by_name_spaces_and_empty_items_as_xl_skips_them() -> None:
    device = parse_xl(" backend=driver , connectors=a:640x480;;b:8x8; ,")
    assert device.backend_domid == 7
    assert not device.be_alloc
    assert [c.unique_id for c in device.connectors] == ["a", "b"]


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("backend=0", "vdispl[0]: no connectors"),
        ("connectors=id0:1920", "vdispl[0]: connectors: 'id0:1920' is not UNIQUE-ID:WIDTHxHEIGHT"),
        ("connectors=id0:0x10", "dimension 0 out of range"),
        ("connectors=a:1x1;a:2x2", "unique-id 'a' appears twice"),
        ("be-alloc=yes,connectors=a:1x1", "vdispl[0]: be-alloc: 'yes' is not 0 or 1"),
        ("backend=nowhere,connectors=a:1x1", "backend: 'nowhere' is neither a domid"),
        ("colour=red,connectors=a:1x1", "unknown setting 'colour'"),
        ("connectors", "'connectors' is not KEY=VALUE"),
    ],
)
def test_xl_errors_name_the_key_and_the_form(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_xl(spec)
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


unique_ids = st.from_regex(r"[A-Za-z0-9_.@+-]{1,12}", fullmatch=True)
connectors = st.builds(
    Connector, unique_ids, st.integers(1, toolstack.MAX_DIMENSION), st.integers(1, 4096)
)
devices = st.builds(
    Vdispl,
    st.just(0),
    st.sampled_from([0, 7]),
    st.booleans(),
    st.lists(connectors, min_size=1, max_size=6, unique_by=lambda c: c.unique_id).map(tuple),
)


@settings(max_examples=200)
@given(devices)
def test_xl_round_trip(device: Vdispl) -> None:
    assert parse_xl(device.xl()) == device


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("abe-=,;:x0123456789 backendconnectorsalloc"), max_size=60))
def test_xl_parser_answers_anything_with_a_device_or_a_config_error(spec: str) -> None:
    try:
        device = parse_xl(spec)
    except ConfigError as error:
        assert str(error).startswith("vdispl[0]")
    else:
        assert device.connectors
        assert parse_xl(device.xl()) == device


CONFIG = """
[backend]
name = "Domain-0"

[[guest]]
name = "alpha"
vdispl = ["connectors=left:640x480;right:320x240"]

[[guest]]
name = "beta"
domid = 9
vdispl = "backend=Domain-0,be-alloc=1,connectors=main:800x600"

[[guest]]
name = "gamma"
[[guest.vdispl]]
be-alloc = true
connectors = [{ unique-id = "one", resolution = "64x32" }, "two:16x16"]
"""


def test_toml_config_with_xl_strings_a_single_string_and_tables() -> None:
    config = toolstack.parse_config(CONFIG)
    assert config.backend == toolstack.BackendConfig("Domain-0", 0, copy=False)
    assert config.backend.page_budget == DEFAULT_PAGE_BUDGET
    alpha, beta, gamma = config.guests
    assert alpha.domid is None
    assert alpha.vdispls[0].connectors == (
        Connector("left", 640, 480),
        Connector("right", 320, 240),
    )
    assert beta.domid == 9
    assert beta.vdispls == (Vdispl(0, 0, True, (Connector("main", 800, 600),)),)
    assert gamma.vdispls[0].connectors == (Connector("one", 64, 32), Connector("two", 16, 16))
    assert gamma.vdispls[0].be_alloc


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[guest]]\nname='a'\nvdispl=['connectors=x']", "guest[0].vdispl[0]: connectors: 'x' is"),
        ("[[guest]]\nvdispl=[]", "guest[0].name: missing"),
        ("[[guest]]\nname='a'\nfoo=1", "guest[0].foo: unknown key"),
        ("[[guest]]\nname='a'\ndomid=0", "guest[0].domid: 0 is dom0"),
        ("[backend]\ndomid='x'\n[[guest]]\nname='a'", "backend.domid: 'x' is not a domid"),
        ("[[guest]]\nname='a'\n[[guest]]\nname='a'", "guest: name 'a' appears twice"),
        ("guest = 3", "guest: expected [[guest]] tables"),
        ("[[guest]\n", "config: not valid TOML"),
        (
            "[[guest]]\nname='a'\n[[guest.vdispl]]\nconnectors=[{unique-id='a', resolution='1'}]",
            "guest[0].vdispl[0].connectors[0].resolution: expected WIDTHxHEIGHT",
        ),
        ("[backend]\npage_budget=0\n[[guest]]\nname='a'", "backend.page_budget: 0 is not a"),
        ("[backend]\npage_budget='9'\n[[guest]]\nname='a'", "backend.page_budget: '9' is not"),
        (
            "[[guest]]\nname='a'\nvdispl=['connectors=big:16384x4097']",
            "guest[0].vdispl[0]: connectors: big: resolution 16384x4097: a 32-bpp frame",
        ),
    ],
)
def test_toml_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        toolstack.parse_config(text)
    assert str(raised.value).startswith(message)


def test_the_page_budget_reaches_the_backend_s_arguments() -> None:
    config = toolstack.parse_config("[backend]\npage_budget = 4096\n[[guest]]\nname = 'a'")
    assert config.backend.page_budget == 4096
    args = backend_domain.domain_args("xs", "planes", False, config.backend.page_budget)
    assert backend_domain.options_from_args(0, tuple(args)).page_budget == 4096
    args = backend_domain.domain_args("xs", "planes", False, 1, descriptor_budget=7)
    assert backend_domain.options_from_args(0, tuple(args)).descriptor_budget == 7
    options = backend_domain.options_from_args(3, ("xs", "planes"))
    assert options.page_budget == DEFAULT_PAGE_BUDGET
    assert options.xenstore_socket == "xs/domain/3"
    for bad, message in (
        ("--page-budget=0", "--page-budget=0: a budget is a whole number, at least 1"),
        ("--page-budget=x", "--page-budget=x: a budget is a whole number"),
        ("--descriptor-budget=0", "--descriptor-budget=0: a budget is a whole number"),
        ("--budget=9", "unknown backend flag '--budget=9'"),
    ):
        with pytest.raises(ValueError) as raised:
            backend_domain.options_from_args(0, ("xs", "planes", bad))
        assert str(raised.value).startswith(message)


def test_a_config_may_set_the_backend_alone() -> None:
    config = toolstack.parse_config("[backend]\ncopy = true\npage_budget = 8192\n")
    assert config.guests == ()
    assert config.backend == toolstack.BackendConfig("Domain-0", 0, copy=True, page_budget=8192)


def test_the_largest_mode_a_connector_may_have_fits_one_display_buffer() -> None:
    # 16384x4096 XRGB8888 is exactly MAX_BUFFER_SIZE; one row more is not.
    largest = parse_xl("connectors=wide:16384x4096;square:8192x8192")
    assert [c.width * c.height * 4 for c in largest.connectors] == [MAX_BUFFER_SIZE] * 2
    with pytest.raises(ConfigError, match="exceeds the largest display buffer"):
        parse_xl("connectors=square:8192x8193")


def test_nodes_follow_libxl_for_one_device() -> None:
    device = Vdispl(0, 0, True, (Connector("id0", 1920, 1080), Connector("id1", 800, 600)))
    plan = toolstack.vdispl_nodes(3, device)
    nodes = {write.path: (write.value, write.permissions) for write in plan.writes}
    front = "/local/domain/3/device/vdispl/0"
    back = "/local/domain/0/backend/vdispl/3/0"
    guest_owned = (Permission(3, Access.NONE), Permission(0, Access.READ))
    toolstack_owned = (Permission(0, Access.NONE), Permission(3, Access.READ))
    assert nodes[f"{front}/backend"] == (back, guest_owned)
    assert nodes[f"{front}/backend-id"] == ("0", guest_owned)
    assert nodes[f"{front}/state"] == ("1", guest_owned)
    assert nodes[f"{front}/be-alloc"] == ("1", toolstack_owned)
    assert nodes[f"{front}/1/resolution"] == ("800x600", toolstack_owned)
    assert nodes[f"{front}/0/unique-id"] == ("id0", toolstack_owned)
    assert nodes[f"{back}/frontend"] == (front, toolstack_owned)
    for name, value in (("frontend-id", "3"), ("online", "1"), ("state", "1")):
        assert nodes[f"{back}/{name}"] == (value, toolstack_owned)
        assert nodes[f"/libxl/3/device/vdispl/0/{name}"][0] == value
    assert not any(path.startswith(f"{back}/0") for path in nodes), "libxl copies no connectors"
    assert set(plan.removals) == {front, back, "/libxl/3/device/vdispl/0"}


VKB_CONFIG = """
[backend]
name = "driver"
domid = 7

[[guest]]
name = "alpha"
vdispl = ["connectors=left:640x480;right:320x240"]
vkb = [
    "unique-id=left,feature-abs-pointer=1,feature-multi-touch=1",
    " backend=driver , unique-id=right, width=100 ,height=50",
    "backend=0,feature-disable-pointer=1",
]

[[guest]]
name = "beta"
vdispl = "connectors=main:8x8"
vkb = "unique-id=main"
"""


def test_toml_vkb_lists_become_devices_numbered_in_order_with_their_backend() -> None:
    alpha, beta = toolstack.parse_config(VKB_CONFIG).guests
    assert alpha.vkbs == (
        Vkb(0, 7, "left", abs_pointer=True, multi_touch=True),
        Vkb(1, 7, "right", width=100, height=50),
        Vkb(2, 0, "", disable_pointer=True),
    )
    assert beta.vkbs == (Vkb(0, 7, "main"),)
    assert toolstack.parse_config(CONFIG).guests[0].vkbs == ()
    paths = toolstack.guest_teardown_paths(3, alpha.vdispls, alpha.vkbs)
    assert "/local/domain/7/backend/vkbd/3/1" in paths
    assert "/local/domain/0/backend/vkbd/3/2" in paths
    assert "/local/domain/3/device/vkbd/0" in paths


GUEST = "[[guest]]\nname='a'\nvdispl=['connectors=left:8x8;right:8x8']\n"


@pytest.mark.parametrize(
    ("vkb", "message"),
    [
        ("3", "guest[0].vkb: expected a list of 'backend=DOMAIN,backend-type=qemu|linux,"),
        ("[3]", "guest[0].vkb[0]: expected a string 'backend=DOMAIN,"),
        ("['colour=red']", "guest[0].vkb[0].colour: unknown vkb setting; expected 'backend="),
        ("['', 'width']", "guest[0].vkb[1]: 'width' is not KEY=VALUE; expected 'backend="),
        ("['feature-abs-pointer=yes']", "guest[0].vkb[0].feature-abs-pointer: 'yes' is not 0"),
        ("['backend=nowhere']", "guest[0].vkb[0].backend: 'nowhere' is not a domid or"),
        ("['multi-touch-num-contacts=999']", "guest[0].vkb[0].multi-touch-num-contacts: at"),
        ("['unique-id=a b']", "guest[0].vkb[0].unique-id: 'a b' is not 1-64 of"),
        (
            "['unique-id=middle']",
            "guest[0].vkb[0].unique-id: 'middle' names no connector of this guest (left, right)",
        ),
        ("['unique-id=left', 'unique-id=left']", "guest[0].vkb: unique-id 'left' appears twice"),
    ],
)
def test_toml_vkb_errors_name_the_key_and_the_form(vkb: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        toolstack.parse_config(f"{GUEST}vkb={vkb}\n")
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


@pytest.fixture(scope="module")
def xenstored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    socket_dir = tmp_path_factory.mktemp("xs")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pvdisplay.cli import main; main()",
            "--log-level",
            "error",
            "xenstored",
            "--socket-dir",
            str(socket_dir),
        ]
    )
    try:
        while not (socket_dir / "socket").exists():
            assert process.poll() is None, "xenstored exited"
            time.sleep(0.02)
        yield socket_dir
    finally:
        process.terminate()
        process.wait()


def test_guest_may_write_its_handshake_nodes_but_not_the_toolstack_config(
    xenstored: Path,
) -> None:
    device = Vdispl(0, 0, False, (Connector("id0", 64, 48),))
    with Client(xenstored / "socket") as dom0:
        apply_plan(dom0, toolstack.domain_nodes(4, "guest4"))
        dom0.introduce(4, 0, 1)
        apply_plan(dom0, toolstack.vdispl_nodes(4, device))
        front = "/local/domain/4/device/vdispl/0"
        with Client(xenstored / "domain" / "4") as guest:
            assert guest.read(f"{front}/0/resolution") == b"64x48"
            assert guest.read(f"{front}/backend") == b"/local/domain/0/backend/vdispl/4/0"
            guest.write(f"{front}/state", "3")
            guest.write(f"{front}/version", "2")
            guest.write(f"{front}/0/req-ring-ref", "8")
            for path in (f"{front}/be-alloc", f"{front}/0/resolution", f"{front}/0/unique-id"):
                with pytest.raises(PermissionError):
                    guest.write(path, "1")
            with pytest.raises(PermissionError):
                guest.rm(f"{front}/0/resolution")
            assert guest.read("/local/domain/0/backend/vdispl/4/0/online") == b"1"
            with pytest.raises(PermissionError):
                guest.write("/local/domain/0/backend/vdispl/4/0/state", "4")
            with pytest.raises(PermissionError):
                guest.read("/libxl/4/device/vdispl/0/backend")
        # A second `xl create` of the same device starts from clean nodes, as libxl's rm does.
        apply_plan(dom0, toolstack.vdispl_nodes(4, device))
        assert not dom0.exists(f"{front}/version")
        assert dom0.read(f"{front}/state") == b"1"


def test_frontend_library_reads_as_many_connectors_as_the_toolstack_allows(
    xenstored: Path,
) -> None:
    connectors = tuple(
        Connector(f"c{index}", 64 + index, 48) for index in range(toolstack.MAX_CONNECTORS)
    )
    with Client(xenstored / "socket") as dom0:
        apply_plan(dom0, toolstack.domain_nodes(5, "guest5"))
        apply_plan(dom0, toolstack.vdispl_nodes(5, Vdispl(0, 0, False, connectors)))

    async def read() -> front.ToolstackConfig:
        async with await AsyncClient.connect(xenstored / "socket") as xs:
            return await front.read_config(xs, "/local/domain/5/device/vdispl/0")

    config = asyncio.run(read())
    assert config.connectors == tuple((c.unique_id, c.width, c.height) for c in connectors)
    with pytest.raises(ConfigError, match="at most"):
        parse_xl(
            "connectors=" + ";".join(f"c{i}:64x48" for i in range(toolstack.MAX_CONNECTORS + 1))
        )


def test_a_xenstored_quota_the_daemon_refuses_is_a_config_error() -> None:
    # Each quota reaches `pvdisplay xenstored --quota`: one it refuses would stop the host.
    with pytest.raises(ConfigError, match=r"xenstored.*quota nodes must be from 1 to 999999999"):
        toolstack.parse_config("[xenstored]\nnodes = 1_000_000_000\n")
    config = toolstack.parse_config("[xenstored]\nnodes = 999_999_999\n")
    assert parse_quotas(["nodes=999999999"]) == config.quotas


def test_example_config_is_the_demo_default() -> None:
    example = Path(__file__).parents[2] / "examples" / "demo.toml"
    config = toolstack.parse_config(example.read_text())
    assert config == toolstack.parse_config(host.DEMO_CONFIG)
    alpha, beta = config.guests
    assert [d.be_alloc for d in alpha.vdispls] == [False]
    assert len(alpha.vdispls[0].connectors) == 2
    assert [(d.be_alloc, len(d.connectors)) for d in beta.vdispls] == [(True, 1)]
    for guest in config.guests:
        connectors = [c.unique_id for device in guest.vdispls for c in device.connectors]
        assert [vkb.unique_id for vkb in guest.vkbs] == connectors, "one vkb per connector"
        assert all(vkb.abs_pointer and vkb.multi_touch for vkb in guest.vkbs)
