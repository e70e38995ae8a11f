"""The `pvdisplay` command.

`pvdisplay --help` answers at once because this module imports only click and light
leaves: each command imports what it runs (numpy, aiohttp, pygame, the stack) when it
runs. That is why pyproject lets this file import inside functions (ruff's PLC0415).
"""

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pvdisplay import __version__, logs
from pvdisplay.exit_status import INTERRUPTED
from pvdisplay.outputs.listen import bind_failure, format_address, parse_listen, warn_if_exposed
from pvdisplay.outputs.vnc import limits as vnc_limits
from pvdisplay.outputs.web import limits as web_limits
from pvdisplay.run_dir import (
    LOG_NAME,
    RunDirBusyError,
    RunDirLock,
    RunDirUnusableError,
    default_run_dir,
)

if TYPE_CHECKING:
    from pvdisplay import backend_domain, toolstack
    from pvdisplay.hv import xen
    from pvdisplay.outputs.snapshot import Snapshot
    from pvdisplay.outputs.web.server import WebViewer

log = logging.getLogger(__name__)

_Command = TypeVar("_Command", bound=Callable[..., None])

_LOG_LEVEL = "pvdisplay.log_level"
QUIET_COMMANDS = frozenset({"demo", "backend"})
"""Commands whose terminal shows warnings only by default: their whole log goes to a file
in the run directory, which the banner names."""
WINDOW_EXTRA = "pip install 'pvdisplay[window]'"


def _note_log_level(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_root().meta[_LOG_LEVEL] = value.lower()


def _log_level_option() -> click.Option:
    return click.Option(
        ["--log-level"],
        type=click.Choice(logs.LEVELS, case_sensitive=False),
        expose_value=False,
        callback=_note_log_level,
        help="Least severe log level written to stderr, before or after the command.  "
        f"[default: warning for demo and backend (their whole log goes to RUN_DIR/{LOG_NAME}), "
        "info for the rest]",
    )


class _Subcommand(click.Command):
    """A command that takes --log-level too, sets up logging before it runs, and ends
    quietly with status 130 when Ctrl-C interrupts it (a server stopped by Ctrl-C once
    it is up ends with 0, as it was asked to)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_log_level_option())

    def invoke(self, ctx: click.Context) -> Any:
        root = ctx.find_root()
        default = "warning" if self.name in QUIET_COMMANDS else "info"
        level = root.meta.setdefault(_LOG_LEVEL, default)
        try:
            logs.configure(level)
            from pvdisplay.ipc.sockets import raise_descriptor_limit

            # Most commands are long-lived servers; each counts its own budgets.
            raise_descriptor_limit()
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(INTERRUPTED) from None


class _Commands(click.Group):
    command_class = _Subcommand

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(_log_level_option())


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pvdisplay")
def main() -> None:
    """Xen PV display and input on an emulated Xen host, and virtio-gpu for QEMU guests."""


def _log_level() -> str:
    level: str = click.get_current_context().find_root().meta[_LOG_LEVEL]
    return level


def _command_name() -> str:
    """This command as the person who started it can type it again: `pvdisplay` when
    PATH finds this very program, else its path (relative when below the current
    directory, as `.venv/bin/pvdisplay`)."""
    import shutil

    started = Path(sys.argv[0])
    if started.name != "pvdisplay":  # python -c or -m: the script beside this interpreter
        started = Path(sys.executable).parent / "pvdisplay"
        if not started.exists():
            return "pvdisplay"
    found = shutil.which("pvdisplay")
    if found is not None and Path(found).resolve() == started.resolve():
        return "pvdisplay"
    relative = os.path.relpath(started.absolute())
    return str(started.absolute()) if relative.startswith("..") else relative


def _listen_option(default: str, what: str) -> Callable[[_Command], _Command]:
    return click.option(
        "--listen",
        default=default,
        show_default=True,
        metavar="HOST:PORT",
        help=f"Where {what} listens (port 0: any free port).",
    )


def _parse_listen(text: str, example_port: int) -> tuple[str, int]:
    try:
        return parse_listen(text, example_port)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None


def _planes_socket_option(default: str) -> Callable[[_Command], _Command]:
    return click.option(
        "--planes-socket",
        type=click.Path(dir_okay=False),
        help=f"The backend's planes socket.  [default: {default}]",
    )


def _planes_socket(option: str | None) -> Path:
    return Path(option) if option else default_run_dir() / "planes.sock"


def _no_backend(socket_path: Path) -> click.ClickException:
    """Why nothing answers on `socket_path`, with what to do about it."""
    if not socket_path.exists():
        problem = f"no planes socket at {socket_path}"
    else:
        problem = f"nothing serves the planes socket {socket_path} (its backend has stopped)"
    return click.ClickException(
        f"{problem}; start `{_command_name()} demo` or `{_command_name()} backend`, "
        "or pass the --planes-socket of a running one"
    )


def _planes_failure(socket_path: Path, error: OSError, doing: str) -> click.ClickException:
    """`error` from the planes socket while `doing` ("cannot open"): a missing backend
    said as such, anything else (EACCES, EMFILE, ...) in the system's words."""
    if isinstance(error, FileNotFoundError | ConnectionRefusedError):
        return _no_backend(socket_path)
    return click.ClickException(
        f"{doing} the planes socket {socket_path}: {error.strerror or error}"
    )


def _backend_lost(socket_path: Path) -> click.ClickException:
    return click.ClickException(
        f"the backend closed the planes socket {socket_path} mid-request (has it stopped?); "
        "try again once it runs"
    )


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
    from pvdisplay.store import server as xenstore_server

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
            help="Where the sockets and the log go.  [default: /tmp/pvdisplay-<uid>]",
        ),
        click.option(
            "--listen",
            "web_listen",
            default=web_limits.DEFAULT_LISTEN,
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


def _web_address(web_listen: str, no_web: bool) -> tuple[str, int] | None:
    if no_web:
        return None
    return _parse_listen(web_listen, web_limits.DEFAULT_PORT)


def _run_host(
    default: "toolstack.HostConfig",
    *,
    config_path: str | None,
    run_dir: str | None,
    web_listen: str,
    no_web: bool,
    copy_frames: bool,
) -> None:
    from dataclasses import replace

    from pvdisplay.toolstack import host

    web = _web_address(web_listen, no_web)
    config = default if config_path is None else _read_host_config(config_path)
    if copy_frames:
        config = replace(config, backend=replace(config.backend, copy=True))
    directory = Path(run_dir) if run_dir else default_run_dir()
    try:
        host.run(config, directory, _log_level(), web, _command_name())
    except host.HostError as error:
        raise click.ClickException(str(error)) from None


def _read_host_config(path: str) -> "toolstack.HostConfig":
    from pvdisplay import toolstack

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{path}: not UTF-8 text; a config is TOML") from None
    except OSError as error:
        raise click.ClickException(
            f"cannot read {path}: {error.strerror}; pass a readable --config"
        ) from None
    try:
        config = toolstack.parse_config(text)
        toolstack.check_backends(config)
    except toolstack.ConfigError as error:
        raise click.ClickException(f"{path}: {error}") from None
    return config


@main.command()
@_host_options("default: the two demo guests.")
def demo(**options: Any) -> None:
    """Run the emulated host (xenstored, broker, backend, demo guests, web viewer) until Ctrl-C."""
    from pvdisplay import toolstack
    from pvdisplay.toolstack import host

    _run_host(toolstack.parse_config(host.DEMO_CONFIG), **options)


@main.command()
@click.argument("domid", type=click.IntRange(0, 0x7FEF))
@click.argument("connector")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Picture file: .png, or .jpg/.jpeg for JPEG.",
)
@click.option("--device", "devid", default=0, show_default=True, help="vdispl device id.")
@_planes_socket_option("/tmp/pvdisplay-<uid>/planes.sock")
def snapshot(
    domid: int, connector: str, output: str, devid: int, planes_socket: str | None
) -> None:
    """Save what connector CONNECTOR (index or unique-id) of domain DOMID shows, as PNG
    or JPEG (by the suffix of --output)."""
    from pvdisplay.outputs import picture_file

    path = Path(output)
    try:
        picture_file.check_suffix(path)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--output") from None
    socket_path = _planes_socket(planes_socket)
    shot = _take_snapshot(socket_path, domid, devid, connector)
    try:
        picture_file.save(shot.rgb, path)
    except OSError as error:
        raise click.ClickException(
            f"cannot write {output}: {error.strerror or error}; pass an --output in a "
            "directory you can write"
        ) from None
    plane = shot.plane
    click.echo(
        f"{output}: domain {domid} connector {plane.connector} ({plane.unique_id}) "
        f"{plane.width}x{plane.height} {plane.fourcc} frame {plane.frame}"
    )


def _take_snapshot(socket_path: Path, domid: int, devid: int, connector: str) -> "Snapshot":
    from pvdisplay.outputs import snapshot as snapshots
    from pvdisplay.planes.client import PlaneClient
    from pvdisplay.planes.model import find_plane

    try:
        client = PlaneClient(socket_path)
    except OSError as error:
        raise _planes_failure(socket_path, error, "cannot open") from None
    with client:
        try:
            planes = client.list()
        except EOFError:
            raise _backend_lost(socket_path) from None
        except OSError as error:
            raise _planes_failure(socket_path, error, "cannot read") from None
        try:
            plane = find_plane(planes, domid, devid, connector)
        except LookupError as error:
            raise click.ClickException(str(error.args[0])) from None
        try:
            return snapshots.take(client, domid, plane.connector, devid)
        except EOFError:
            raise _backend_lost(socket_path) from None
        except FileNotFoundError:
            raise click.ClickException(
                f"domain {domid} connector {plane.connector} ({plane.unique_id}) shows "
                "nothing yet; has its guest flipped a frame?"
            ) from None
        except OSError as error:
            raise click.ClickException(
                f"cannot snapshot domain {domid} connector {plane.connector}: "
                f"{error.strerror or error}"
            ) from None


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
    from pvdisplay.hv import xen
    from pvdisplay.toolstack import host

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
    import asyncio

    from pvdisplay import backend_domain
    from pvdisplay.hv import xen
    from pvdisplay.store.transport import xenstore_path

    web = _web_address(web_listen, no_web)
    directory = Path(run_dir) if run_dir else default_run_dir()
    with _run_dir_held(directory), _log_file(directory / LOG_NAME):
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
            asyncio.run(_serve_on_xen(hypervisor, options, web, directory / LOG_NAME))
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
    except RunDirUnusableError as error:
        raise click.ClickException(
            f"cannot use {directory} as the run directory: {error.strerror}; pass another --run-dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _log_file(path: Path) -> Iterator[None]:
    log_file = logs.LogFile(path)
    try:
        log_file.open()
    except OSError as error:
        raise click.ClickException(
            f"cannot write the log {path}: {error.strerror or error}; pass another --run-dir"
        ) from None
    try:
        yield
    finally:
        log_file.close()


async def _serve_on_xen(
    hypervisor: "xen.XenHypervisor",
    options: "backend_domain.Options",
    web: tuple[str, int] | None,
    log_file: Path,
) -> None:
    import asyncio
    import signal

    from pvdisplay import backend_domain
    from pvdisplay.outputs.web.server import WebViewer

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    async with backend_domain.BackendDomain(hypervisor, options):
        viewer = None
        if web is not None:
            viewer = WebViewer(options.planes_socket, *web, xenstore_socket=options.xenstore_socket)
            await viewer.start()
        try:
            click.echo(f"display and input backend of Xen domain {hypervisor.domid}")
            click.echo(f"  planes socket {options.planes_socket}")
            if viewer is not None:
                click.echo(f"  web viewer {viewer.url}")
            click.echo(f"  log {log_file}  (--log-level info shows it here too)")
            click.echo("stop with Ctrl-C")
            await stop.wait()
        finally:
            if viewer is not None:
                await viewer.close()


@main.command()
@_planes_socket_option("<run dir of pvdisplay demo>/planes.sock")
@_listen_option(web_limits.DEFAULT_LISTEN, "the web viewer")
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
    default=web_limits.DEFAULT_MAX_CLIENTS,
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
    import asyncio

    from pvdisplay.outputs.web import tiles
    from pvdisplay.outputs.web.server import WebViewer

    socket_path = _planes_socket(planes_socket)
    names_socket = xenstore_socket or socket_path.parent / "xenstore" / "socket_ro"
    address, port = _parse_listen(listen, web_limits.DEFAULT_PORT)
    try:
        level = tiles.parse_quality(quality)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--quality") from None
    viewer = WebViewer(socket_path, address, port, level, names_socket, max_clients=max_clients)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_web(viewer, socket_path))


async def _serve_web(viewer: "WebViewer", socket_path: Path) -> None:
    import asyncio

    try:
        await viewer.start()
    except OSError as error:
        await viewer.close()
        raise click.ClickException(
            f"cannot listen on {format_address(viewer.host, viewer.port)}: "
            f"{bind_failure(error)}; pass a free --listen HOST:PORT"
        ) from None
    try:
        click.echo(f"web viewer on {viewer.url} for {socket_path} (Ctrl-C stops it)")
        await asyncio.Event().wait()
    finally:
        await viewer.close()


@main.command()
@_planes_socket_option("<run dir of pvdisplay demo>/planes.sock")
@_listen_option(
    vnc_limits.DEFAULT_LISTEN,
    "the first connector's VNC server (each further connector takes the next port)",
)
@click.option(
    "--password-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Offer VNC authentication with the password written in this file, as plain text "
    "(else no security).",
)
@click.option(
    "--max-clients",
    type=click.IntRange(1),
    default=vnc_limits.DEFAULT_MAX_CLIENTS,
    show_default=True,
    help="Clients served at once over all connectors; more are closed at once.",
)
def vnc(
    planes_socket: str | None,
    listen: str,
    password_file: str | None,
    max_clients: int,
) -> None:
    """Serve every guest connector over VNC (RFB 3.3/3.7/3.8), one port per connector."""
    import asyncio

    from pvdisplay.outputs.vnc import server as vnc_server

    socket_path = _planes_socket(planes_socket)
    address, port = _parse_listen(listen, vnc_limits.DEFAULT_PORT)
    password = _read_password(password_file) if password_file else None
    if password is None:
        # Ports are bound per connector as connectors appear, so no one address is known yet.
        reachable = (
            f"{address} on the ports its `vnc listening` log lines name"
            if port == 0
            else f"{format_address(address, port)} and the ports after it (one per connector)"
        )
        warn_if_exposed(
            "the VNC server", address, reachable, "pass --password-file, or listen on 127.0.0.1"
        )
    try:
        asyncio.run(vnc_server.serve(socket_path, address, port, password, max_clients))
    except vnc_server.NoListenerError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise _planes_failure(socket_path, error, "cannot serve VNC for") from None
    except KeyboardInterrupt:
        pass


def _read_password(path: str) -> str:
    """The VNC password in `path` (surrounding whitespace, such as the newline, dropped)."""
    from pvdisplay.outputs.vnc import des as vnc_des

    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise click.ClickException(
            f"--password-file {path}: not text (a vncpasswd file is encrypted); write the "
            f"password itself in it, 1 to {vnc_des.BLOCK_SIZE} ASCII characters"
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
    if not password.isprintable():
        raise click.ClickException(
            f"--password-file {path}: control characters, not text (a vncpasswd file is "
            f"encrypted); write the password itself in it, 1 to {vnc_des.BLOCK_SIZE} ASCII "
            "characters"
        )
    return password


def _scanout_size(text: str) -> tuple[int, int]:
    from pvdisplay.wire import edid

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
    if print_capabilities:
        click.echo('{\n  "type": "gpu",\n  "features": []\n}')
        return
    import asyncio

    from pvdisplay.virtio import gpu, server

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
@_planes_socket_option("/tmp/pvdisplay-<uid>/planes.sock")
def view(domid: int, connector: str, devid: int, planes_socket: str | None) -> None:
    """Show connector CONNECTOR (index or unique-id) of domain DOMID in a window, with input."""
    try:
        from pvdisplay.outputs.window import viewer as window_viewer
    except ModuleNotFoundError as error:
        if error.name != "pygame":
            raise
        raise click.ClickException(
            f"the window needs pygame, which is not installed; get it with: {WINDOW_EXTRA}"
        ) from None
    try:
        window_viewer.view(_planes_socket(planes_socket), domid, connector, devid)
    except window_viewer.ViewerError as error:
        raise click.ClickException(str(error)) from None
    except KeyboardInterrupt:
        pass
