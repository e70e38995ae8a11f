"""The `pvdisplay` command."""

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import click

from pvdisplay import __version__, backend_domain, logs, toolstack
from pvdisplay.hv import xen
from pvdisplay.ipc.sockets import raise_descriptor_limit
from pvdisplay.outputs import snapshot as snapshots
from pvdisplay.outputs.vnc import des as vnc_des
from pvdisplay.outputs.vnc import server as vnc_server
from pvdisplay.outputs.web import server as web_server
from pvdisplay.outputs.web import tiles as web_tiles
from pvdisplay.outputs.window import viewer as window_viewer
from pvdisplay.planes.client import PlaneClient
from pvdisplay.run_dir import RunDirBusyError, RunDirLock
from pvdisplay.store import server as xenstore_server
from pvdisplay.store.transport import xenstore_path
from pvdisplay.toolstack import host
from pvdisplay.wire import edid

_Command = TypeVar("_Command", bound=Callable[..., None])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pvdisplay")
@click.option(
    "--log-level",
    type=click.Choice(logs.LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Least severe log level written to stderr.",
)
def main(log_level: str) -> None:
    """Xen PV display and input on an emulated Xen host, and virtio-gpu for QEMU guests."""
    logs.configure(log_level)
    # Every command but `snapshot` is a long-lived server; each counts its own budgets.
    raise_descriptor_limit()


@main.command()
@click.option(
    "--socket-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for socket (dom0), socket_ro (read-only) and domain/<domid>.",
)
@click.option(
    "--quota",
    "quota_settings",
    multiple=True,
    metavar="NAME=N",
    help="Limit for unprivileged domains, repeatable (as xenstored -Q), e.g. nodes=1000.",
)
def xenstored(socket_dir: str, quota_settings: tuple[str, ...]) -> None:
    """Run the XenStore daemon in the foreground until SIGINT or SIGTERM."""
    try:
        quotas = xenstore_server.parse_quotas(quota_settings)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--quota") from None
    try:
        xenstore_server.run(socket_dir, quotas)
    except xenstore_server.DaemonRunningError as error:
        raise click.ClickException(
            f"{error}; stop that daemon or pass another --socket-dir"
        ) from None
    except OSError as error:
        raise click.ClickException(
            f"cannot serve XenStore in {socket_dir}: {error}; pass another --socket-dir"
        ) from None


def _host_options(config_help: str) -> Callable[[_Command], _Command]:
    """The options `demo` and `backend` share: both run the emulated host (`host.run`)."""
    options = [
        click.option(
            "--config",
            "config_path",
            type=click.Path(dir_okay=False, exists=True),
            help=f"Host config (TOML, see docs/host.md); {config_help}",
        ),
        click.option(
            "--run-dir",
            type=click.Path(file_okay=False),
            help="Where the sockets go.  [default: /tmp/pvdisplay-<uid>]",
        ),
        click.option(
            "--web",
            "web_listen",
            default="127.0.0.1:8080",
            show_default=True,
            metavar="HOST:PORT",
            help="Where the web viewer listens (port 0: any free port).",
        ),
        click.option("--no-web", is_flag=True, help="Do not start the web viewer."),
        click.option(
            "--copy",
            "copy_frames",
            is_flag=True,
            help="The backend copies each flipped frame into a buffer of its own (as "
            "`copy = true` in the config; for comparison with zero-copy).",
        ),
    ]

    def decorate(command: _Command) -> _Command:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _run_host(
    default: toolstack.HostConfig,
    *,
    config_path: str | None,
    run_dir: str | None,
    web_listen: str,
    no_web: bool,
    copy_frames: bool,
) -> None:
    try:
        web = None if no_web else web_server.parse_listen(web_listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--web") from None
    config = default if config_path is None else _read_host_config(config_path)
    if copy_frames:
        config = replace(config, backend=replace(config.backend, copy=True))
    level = click.get_current_context().find_root().params["log_level"]
    try:
        host.run(config, Path(run_dir) if run_dir else host.default_run_dir(), level, web)
    except host.HostError as error:
        raise click.ClickException(str(error)) from None


def _read_host_config(path: str) -> toolstack.HostConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not UTF-8 text; a config is TOML") from None
    except OSError as error:
        raise click.ClickException(
            f"cannot read {path}: {error.strerror}; pass a readable --config"
        ) from None
    try:
        return toolstack.parse_config(text)
    except toolstack.ConfigError as error:
        raise click.ClickException(f"{path}: {error}") from None


@main.command()
@_host_options("default: the two demo guests.")
def demo(**options: Any) -> None:
    """Run the emulated host (xenstored, broker, backend, demo guests, web viewer) until Ctrl-C."""
    _run_host(toolstack.parse_config(host.DEMO_CONFIG), **options)


@main.command()
@click.argument("domid", type=click.IntRange(0, 0x7FEF))
@click.argument("connector")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="PNG file.")
@click.option("--device", "devid", default=0, show_default=True, help="vdispl device id.")
@click.option(
    "--planes-socket",
    type=click.Path(dir_okay=False),
    help="The backend's planes socket.  [default: /tmp/pvdisplay-<uid>/planes.sock]",
)
def snapshot(
    domid: int, connector: str, output: str, devid: int, planes_socket: str | None
) -> None:
    """Save what connector CONNECTOR (index or unique-id) of domain DOMID shows, as PNG."""
    socket_path = Path(planes_socket) if planes_socket else host.default_run_dir() / "planes.sock"
    try:
        with PlaneClient(socket_path) as client:
            index = snapshots.resolve_connector(client, domid, devid, connector)
            shot = snapshots.take(client, domid, index, devid)
    except (FileNotFoundError, ConnectionRefusedError):
        raise click.ClickException(
            f"nothing to snapshot: no plane for domain {domid} connector {connector} behind "
            f"{socket_path} (is `pvdisplay demo` running, and has the guest flipped a frame?)"
        ) from None
    except (LookupError, OSError) as error:
        raise click.ClickException(str(error)) from None
    snapshots.save_png(shot, Path(output))
    plane = shot.plane
    click.echo(
        f"{output}: domain {domid} connector {plane.connector} ({plane.unique_id}) "
        f"{plane.width}x{plane.height} {plane.fourcc} frame {plane.frame}"
    )


@main.command()
@click.option(
    "--hv",
    type=click.Choice(["local", "xen"]),
    help="The hypervisor: xen runs in a real dom0 beside its xenstored and xl; local runs "
    "the emulated host.  [default: xen where /proc/xen/capabilities says control_d, "
    "else local]",
)
@_host_options("default: no guests. Local only: on Xen, xl creates guests.")
def backend(hv: str | None, **options: Any) -> None:
    """Run the display and input backends, and the web viewer, until Ctrl-C.

    On Xen (docs/real-xen.md): in dom0, serving the vdispl and vkb devices xl creates,
    with the planes socket in --run-dir. Locally: the emulated host without demo guests
    (xenstored, the hypervisor broker, the backends as domain 0, guests from --config).
    """
    chosen = hv or ("xen" if xen.is_control_domain() else "local")
    if chosen == "local":
        _run_host(host.BACKEND_ONLY, **options)
        return
    if options["config_path"] is not None:
        raise click.UsageError(
            "--config describes emulated guests; on Xen, xl creates guests (docs/real-xen.md)"
        )
    _run_on_xen(**{k: v for k, v in options.items() if k != "config_path"})


def _run_on_xen(run_dir: str | None, web_listen: str, no_web: bool, copy_frames: bool) -> None:
    try:
        web = None if no_web else web_server.parse_listen(web_listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--web") from None
    directory = Path(run_dir) if run_dir else host.default_run_dir()
    with _run_dir_held(directory):
        try:
            hypervisor = xen.open_hypervisor()
        except OSError as error:
            raise click.ClickException(
                f"cannot open Xen's devices: {error} (run as root in dom0, with the "
                "xen-evtchn, xen-gntdev and xen-gntalloc modules loaded)"
            ) from None
        options = backend_domain.Options(
            xenstore_path(), str(directory / "planes.sock"), copy_frames
        )
        try:
            asyncio.run(_serve_on_xen(hypervisor, options, web))
        except (OSError, ConnectionError) as error:
            raise click.ClickException(
                f"cannot serve as Xen's display backend: {error} (is xenstored running?)"
            ) from None
        finally:
            hypervisor.close()


@contextlib.contextmanager
def _run_dir_held(directory: Path) -> Iterator[None]:
    lock = RunDirLock(directory)
    try:
        lock.acquire()
    except RunDirBusyError:
        raise click.ClickException(
            f"{directory} is in use by another running pvdisplay backend; stop it or pass "
            "another --run-dir"
        ) from None
    except OSError as error:
        raise click.ClickException(
            f"cannot use {directory} as the run directory: {error.strerror}; pass another --run-dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


async def _serve_on_xen(
    hypervisor: xen.XenHypervisor, options: backend_domain.Options, web: tuple[str, int] | None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    async with backend_domain.BackendDomain(hypervisor, options):
        viewer = None
        if web is not None:
            viewer = web_server.WebViewer(
                options.planes_socket, *web, xenstore_socket=options.xenstore_socket
            )
            await viewer.start()
        try:
            click.echo(f"display and input backend of Xen domain {hypervisor.domid}")
            click.echo(f"  planes socket {options.planes_socket}")
            if viewer is not None:
                click.echo(f"  web viewer {viewer.url}")
            click.echo("stop with Ctrl-C")
            await stop.wait()
        finally:
            if viewer is not None:
                await viewer.close()


@main.command()
@click.option(
    "--planes-socket",
    type=click.Path(dir_okay=False),
    help="The backend's planes socket.  [default: <run dir of pvdisplay demo>/planes.sock]",
)
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Address of the web viewer (loopback unless you say otherwise).",
)
@click.option(
    "--quality",
    default="80",
    show_default=True,
    help="JPEG quality 1..100 (PNG still wins where smaller), or 'lossless'.",
)
@click.option(
    "--xenstore-socket",
    type=click.Path(dir_okay=False),
    help="xenstored socket the index reads domain names from.  "
    "[default: xenstore/socket_ro beside the planes socket, as the emulated host has it]",
)
@click.option(
    "--max-clients",
    type=click.IntRange(1),
    default=web_server.DEFAULT_MAX_CLIENTS,
    show_default=True,
    help="Viewers and index pages served at once; more are answered 503.",
)
def web(
    planes_socket: str | None,
    listen: str,
    quality: str,
    xenstore_socket: str | None,
    max_clients: int,
) -> None:
    """Serve every guest display to web browsers, with keyboard, mouse and touch."""
    socket_path = Path(planes_socket) if planes_socket else host.default_run_dir() / "planes.sock"
    names_socket = xenstore_socket or socket_path.parent / "xenstore" / "socket_ro"
    try:
        address, port = web_server.parse_listen(listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    try:
        level = web_tiles.parse_quality(quality)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--quality") from None
    click.echo(f"web viewer on http://{listen}/ for {socket_path} (Ctrl-C stops it)")
    try:
        asyncio.run(
            web_server.serve(
                socket_path, address, port, level, names_socket, max_clients=max_clients
            )
        )
    except OSError as error:
        raise click.ClickException(
            f"cannot serve on {listen} from {socket_path}: {error}; "
            "start `pvdisplay demo` first or pass --planes-socket and a free --listen"
        ) from None
    except KeyboardInterrupt:
        pass


@main.command()
@click.option(
    "--planes-socket",
    type=click.Path(),
    help="The backend's planes socket.  [default: <run dir of pvdisplay demo>/planes.sock]",
)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5900,
    show_default=True,
    help="Port of the first connector; each further connector takes the next port.",
)
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Offer VNC authentication with the password in this file (else no security).",
)
@click.option(
    "--max-clients",
    type=click.IntRange(1),
    default=vnc_server.DEFAULT_MAX_CLIENTS,
    show_default=True,
    help="Clients served at once over all connectors; more are closed at once.",
)
def vnc(
    planes_socket: str | None,
    address: str,
    port: int,
    password_file: str | None,
    max_clients: int,
) -> None:
    """Serve every guest connector over VNC (RFB 3.3/3.7/3.8), one port per connector."""
    socket_path = planes_socket or str(host.default_run_dir() / "planes.sock")
    password = _read_password(password_file) if password_file else None
    try:
        asyncio.run(vnc_server.serve(socket_path, address, port, password, max_clients))
    except OSError as error:
        raise click.ClickException(
            f"cannot serve VNC on {address}:{port} from {socket_path}: {error}; "
            "start `pvdisplay demo` first or pass --planes-socket and a free --port"
        ) from None
    except KeyboardInterrupt:
        pass


def _read_password(path: str) -> str:
    """The VNC password in `path` (surrounding whitespace, such as the newline, dropped)."""
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise click.ClickException(
            f"--password-file {path}: not UTF-8 text; write the password as text"
        ) from None
    except OSError as error:
        raise click.ClickException(
            f"--password-file {path}: cannot read it ({error.strerror}); pass a readable file"
        ) from None
    if not password:
        raise click.ClickException(
            f"--password-file {path}: empty; write a password of 1 to "
            f"{vnc_des.BLOCK_SIZE} characters in it, or leave the option out for no security"
        )
    if len(password) > vnc_des.BLOCK_SIZE:
        raise click.ClickException(
            f"--password-file {path}: the password has {len(password)} characters but VNC "
            f"authentication uses only the first {vnc_des.BLOCK_SIZE}; shorten it"
        )
    if not password.isascii():
        raise click.ClickException(
            f"--password-file {path}: VNC clients differ on how they encode characters "
            "outside ASCII; use ASCII characters only"
        )
    return password


def _scanout_size(text: str) -> tuple[int, int]:
    width, sep, height = text.partition("x")
    if not (sep and width.isdecimal() and height.isdecimal()):
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT", param_hint="--scanout")
    size = int(width), int(height)
    if not all(16 <= value <= edid.MAX_ACTIVE for value in size):
        raise click.BadParameter(
            f"{text}: sides run from 16 to {edid.MAX_ACTIVE} (the most an EDID mode describes)",
            param_hint="--scanout",
        )
    return size


@main.command("vhost-user-gpu")
@click.option(
    "-s", "--socket-path", type=click.Path(dir_okay=False), help="Listen on this unix socket."
)
@click.option(
    "-f",
    "--fd",
    "fd",
    type=click.IntRange(min=0),
    help="Serve this inherited, connected socket.",
)
@click.option(
    "-c", "--print-capabilities", is_flag=True, help="Print the back-end's capabilities (JSON)."
)
@click.option(
    "--planes-socket",
    type=click.Path(dir_okay=False),
    help="Also serve the scanouts as planes here (snapshot, VNC, web).",
)
@click.option(
    "--domid",
    type=click.IntRange(0, 0x7FEF),
    default=1,
    show_default=True,
    help="Guest id the planes carry.",
)
@click.option(
    "--scanout",
    "scanouts",
    multiple=True,
    metavar="WxH",
    help="Size of each scanout, repeatable (match QEMU's max_outputs).  [default: 1280x800]",
)
def vhost_user_gpu(
    *,
    socket_path: str | None,
    fd: int | None,
    print_capabilities: bool,
    planes_socket: str | None,
    domid: int,
    scanouts: tuple[str, ...],
) -> None:
    """Serve virtio-gpu (2D) to QEMU over vhost-user, like QEMU's own vhost-user-gpu."""
    from pvdisplay.virtio import gpu, server  # noqa: PLC0415 (keeps cli start-up light)

    if print_capabilities:
        click.echo('{\n  "type": "gpu",\n  "features": []\n}')
        return
    if (socket_path is None) == (fd is None):
        raise click.UsageError("pass exactly one of --socket-path and --fd")
    sizes = [_scanout_size(text) for text in scanouts] or [(1280, 800)]
    try:
        gpu.check_scanouts(sizes)
    except ValueError as error:
        raise click.BadParameter(
            f"{error}; pass fewer or smaller", param_hint="--scanout"
        ) from None
    try:
        listener = server.listen(Path(socket_path)) if socket_path is not None else None
        connected = server.inherited(fd) if fd is not None else None
    except OSError as error:
        hint = "a new --socket-path" if fd is None else "the descriptor of a connected socket"
        raise click.ClickException(f"{error.strerror or error}; pass {hint}") from None
    planes = Path(planes_socket) if planes_socket else None
    try:
        asyncio.run(server.serve(listener, connected, sizes, domid, planes))
    except OSError as error:
        raise click.ClickException(str(error.strerror or error)) from None
    except KeyboardInterrupt:
        pass


@main.command()
@click.argument("domid", type=click.IntRange(0, 0x7FEF))
@click.argument("connector")
@click.option("--device", "devid", default=0, show_default=True, help="vdispl device id.")
@click.option(
    "--planes-socket",
    type=click.Path(dir_okay=False),
    help="The backend's planes socket.  [default: /tmp/pvdisplay-<uid>/planes.sock]",
)
def view(domid: int, connector: str, devid: int, planes_socket: str | None) -> None:
    """Show connector CONNECTOR (index or unique-id) of domain DOMID in a window, with input."""
    socket_path = Path(planes_socket) if planes_socket else host.default_run_dir() / "planes.sock"
    try:
        window_viewer.view(socket_path, domid, connector, devid)
    except window_viewer.ViewerError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        pass
