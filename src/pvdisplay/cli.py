"""The `pvdisplay` command."""

import asyncio
from pathlib import Path

import click

from pvdisplay import __version__, host, logs, toolstack
from pvdisplay import snapshot as snapshots
from pvdisplay.outputs.vnc import server as vnc_server
from pvdisplay.outputs.web import server as web_server
from pvdisplay.outputs.web import tiles as web_tiles
from pvdisplay.outputs.window import viewer as window_viewer
from pvdisplay.planes import PlaneClient
from pvdisplay.store import server as xenstore_server


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
    """Xen PV display and input, emulated on one Linux host or on real Xen."""
    logs.configure(log_level)


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
    except OSError as error:
        raise click.ClickException(
            f"cannot serve XenStore in {socket_dir}: {error}; pass a writable --socket-dir "
            "whose socket paths fit in 107 bytes"
        ) from None


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, exists=True),
    help="Host config (TOML, see docs/host.md); default: two demo guests.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where the sockets go.  [default: /tmp/pvdisplay-<uid>]",
)
@click.option(
    "--web",
    "web_listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the web viewer listens.",
)
@click.option("--no-web", is_flag=True, help="Do not start the web viewer.")
def demo(config_path: str | None, run_dir: str | None, web_listen: str, no_web: bool) -> None:
    """Run the emulated host (xenstored, broker, backend, demo guests, web viewer) until Ctrl-C."""
    try:
        web = None if no_web else web_server.parse_listen(web_listen)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--web") from None
    text = Path(config_path).read_text() if config_path else host.DEMO_CONFIG
    try:
        config = toolstack.parse_config(text)
    except toolstack.ConfigError as error:
        raise click.ClickException(f"{config_path or 'built-in config'}: {error}") from None
    level = click.get_current_context().find_root().params["log_level"]
    try:
        host.run_demo(config, Path(run_dir) if run_dir else host.default_run_dir(), level, web)
    except host.HostError as error:
        raise click.ClickException(str(error)) from None


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
    "--xenstore-dir",
    required=True,
    type=click.Path(file_okay=False),
    help="The `pvdisplay xenstored --socket-dir` the backend connects to.",
)
@click.option(
    "--planes-socket",
    required=True,
    type=click.Path(dir_okay=False),
    help="Unix socket path where the backend serves the plane query.",
)
@click.option(
    "--copy",
    "copy_frames",
    is_flag=True,
    help="Copy each flipped frame into the backend's own buffer (for comparison).",
)
def backend(xenstore_dir: str, planes_socket: str, copy_frames: bool) -> None:
    """The display backend's options (displ_be role); it runs inside the emulated host.

    The backend needs a hypervisor handle, which only a domain process of the emulated
    host holds, so the host starts it as domain 0 with these options (see
    docs/display-backend.md).
    """
    from pvdisplay.display.service import Options  # noqa: PLC0415 (keeps cli start-up light)

    args = " ".join(Options(xenstore_dir, planes_socket, copy_frames).to_args())
    raise click.ClickException(
        "the display backend runs as a domain of the emulated host, the only place a "
        "hypervisor handle exists; start the host (`make demo`), which runs "
        f"pvdisplay.display.service:run {args}"
    )


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
def web(planes_socket: str | None, listen: str, quality: str) -> None:
    """Serve every guest display to web browsers, with keyboard, mouse and touch."""
    socket_path = Path(planes_socket) if planes_socket else host.default_run_dir() / "planes.sock"
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
        asyncio.run(web_server.serve(socket_path, address, port, level))
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
def vnc(planes_socket: str | None, address: str, port: int, password_file: str | None) -> None:
    """Serve every guest connector over VNC (RFB 3.3/3.7/3.8), one port per connector."""
    socket_path = planes_socket or str(host.default_run_dir() / "planes.sock")
    password = Path(password_file).read_text().strip() if password_file else None
    try:
        asyncio.run(vnc_server.serve(socket_path, address, port, password))
    except OSError as error:
        raise click.ClickException(
            f"cannot serve VNC on {address}:{port} from {socket_path}: {error}; "
            "start `pvdisplay demo` first or pass --planes-socket and a free --port"
        ) from None
    except KeyboardInterrupt:
        pass


def _scanout_size(text: str) -> tuple[int, int]:
    width, sep, height = text.partition("x")
    if not (sep and width.isdecimal() and height.isdecimal()):
        raise click.BadParameter(f"{text!r} is not WIDTHxHEIGHT", param_hint="--scanout")
    size = int(width), int(height)
    if not all(16 <= value <= 16384 for value in size):
        raise click.BadParameter(f"{text}: sides run from 16 to 16384", param_hint="--scanout")
    return size


@main.command("vhost-user-gpu")
@click.option(
    "-s", "--socket-path", type=click.Path(dir_okay=False), help="Listen on this unix socket."
)
@click.option("-f", "--fd", "fd", type=int, help="Serve this inherited, connected socket.")
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
    from pvdisplay.virtio import server  # noqa: PLC0415 (keeps cli start-up light)

    if print_capabilities:
        click.echo('{\n  "type": "gpu",\n  "features": []\n}')
        return
    if (socket_path is None) == (fd is None):
        raise click.UsageError("pass exactly one of --socket-path and --fd")
    sizes = [_scanout_size(text) for text in scanouts] or [(1280, 800)]
    try:
        listener = server.listen(Path(socket_path)) if socket_path is not None else None
        connected = server.inherited(fd) if fd is not None else None
    except OSError as error:
        raise click.ClickException(f"cannot serve vhost-user: {error}") from None
    planes = Path(planes_socket) if planes_socket else None
    try:
        asyncio.run(server.serve(listener, connected, sizes, domid, planes))
    except OSError as error:
        raise click.ClickException(f"cannot serve planes on {planes_socket}: {error}") from None
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
