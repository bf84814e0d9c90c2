"""The `bulk360-relay` command: serve, migrate, simulator, keygen, prune, callback-receiver,
--version."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import typer

from app import __version__
from app.config import ConfigError, Settings, hash_api_key, load_settings

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="bulk360-relay: send SMS/WhatsApp through Bulk360, ingest its delivery notifications.",
)


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bulk360-relay {__version__}")
        raise typer.Exit


@cli.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Send SMS/WhatsApp through Bulk360 and keep every delivery notification."""


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each a full relay).")] = 1,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies trusted for X-Forwarded-For, e.g. 10.0.0.5 (default: none; the "
            "DN allow-list then sees the socket address)."
        ),
    ] = None,
) -> None:
    """Serve the relay (HTTP API, DN hook, metrics)."""
    import uvicorn

    if "PUBLIC_BASE_URL" not in os.environ:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        os.environ["PUBLIC_BASE_URL"] = f"http://{shown}:{port}"
    settings = _settings()  # refuse to start on a bad configuration, before binding
    if settings.database_url is None:
        # Each worker process starts or joins the embedded server in its lifespan; say now,
        # in one line, if it cannot.
        from app import embedded

        try:
            embedded.check_available()
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
    uvicorn.run(
        "app.main:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        # uvicorn would trust X-Forwarded-For from 127.0.0.1 by default: a local process could
        # then claim any address to the DN allow-list. Trust only the proxies named.
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips or "",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=30,
    )


@cli.command()
def migrate() -> None:
    """Upgrade the database (DATABASE_URL) to the newest schema."""
    from app import embedded
    from app.migrate import upgrade

    settings = _settings()
    try:
        url = embedded.database_url(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    upgrade(url)
    typer.echo("database is at the newest schema")


@cli.command()
def simulator(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
) -> None:
    """Run the Bulk360 simulator standalone (settings: BULK360_APP_KEY/SECRET, SIMULATOR_*)."""
    from app.bulk360.simulator import run

    run(host, port)


@cli.command()
def keygen(
    name: Annotated[str, typer.Argument(help="Name recorded on every message sent with it.")],
) -> None:
    """Print a new API key once, and the API_KEYS entry to add for it."""
    if not name or ":" in name or "," in name or len(name) > 64:
        typer.echo("error: NAME must be 1-64 characters without ':' or ','", err=True)
        raise typer.Exit(2)
    key = "b360_" + secrets.token_urlsafe(32)
    typer.echo(f"API key (shown once, give it to the calling service): {key}")
    typer.echo(f"API_KEYS entry: {name}:{hash_api_key(key)}")


@cli.command()
def prune(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            min=0,
            help="Days (decimals allowed): delete messages created, and unmatched DNs "
            "received, longer ago than this.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete old messages with their DNs and callback events, old unmatched DNs and expired
    Idempotency-Keys, at most 2,000 rows per transaction; print what was deleted."""
    import asyncio

    from app import embedded
    from app.outcomes.retention import prune_command

    settings = _settings()
    try:
        url = embedded.database_url(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(asyncio.run(prune_command(url, older_than, dry_run=dry_run)))


@cli.command("callback-receiver")
def callback_receiver(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9100,
) -> None:
    """Receive status callbacks: verify each signature (CALLBACK_SIGNING_SECRETS, or the
    sandbox secret) and print each event; for trying callbacks out, not for production."""
    from app.callbacks.receiver import run

    settings = _settings()
    if not settings.callback_secrets:
        typer.echo("error: CALLBACK_SIGNING_SECRETS is not set", err=True)
        raise typer.Exit(2)
    run(host, port, settings.callback_secrets)


def main() -> None:
    cli(prog_name="bulk360-relay")


if __name__ == "__main__":  # pragma: no cover
    main()
