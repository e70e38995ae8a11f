"""The `pvdisplay` command."""

import click

from pvdisplay import __version__, logs
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
