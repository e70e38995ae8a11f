"""The `pvdisplay` command."""

import click

from pvdisplay import __version__, logs


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
