"""The ``wml`` command: serve, demo, export-schema, the consumer's and the operator's client commands, and
the data side-car."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import ValidationError

from core.assets import CatalogError
from core.errors import DomainError
from core.settings import Settings, setting_name
from wml.client.connector import DIALECTS, NEWEST
from wml.commands.common import EXIT_CODES, client_options, run_client_command
from wml.commands.consumer import add_consumer_commands
from wml.commands.operator import add_operator_commands
from wml.logs import configure_logging
from wml.single import AlreadyServingError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wml",
        description="Workflow middle-layer: sell container workloads. The client commands (upload, run, "
        "download, jobs, job, logs, cancel, files, rm; consumers list|tokens|revoke, grants) talk to the API "
        "at --url (WML_URL) with --token (WML_TOKEN).",
        epilog=f"{EXIT_CODES}.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    common = client_options()
    add_consumer_commands(sub, common)

    serve = sub.add_parser("serve", help="run the API server (settings from WML_* variables)")
    serve.add_argument("--host", help="listen address (WML_HOST)")
    serve.add_argument("--port", type=int, help="listen port (WML_PORT)")

    demo = sub.add_parser("demo", help="run the dummy job end to end on a throw-away embedded server")
    demo.add_argument(
        "--data-dir", type=Path, help="keep the demo's data here instead of a temporary directory"
    )
    demo.add_argument("--sleep", type=int, default=3, help="seconds the dummy job runs (default 3)")
    demo.add_argument("--verbose", action="store_true", help="show the server's log lines too")
    demo.add_argument(
        "--workflow",
        choices=("auto", "local", "container"),
        default="auto",
        help="where the job runs: podman containers when available (auto), or local processes",
    )
    demo.add_argument(
        "--edc",
        "--dialect",
        dest="dialect",
        choices=DIALECTS,
        default=NEWEST,
        help="the EDC protocol the connector stand-in speaks: 0.16 (the data plane's ProvisionHttp, the "
        "default), 0.11 (the control plane's provision-http) or milestone (milestone-8, no request type)",
    )

    watch = sub.add_parser(
        "watch", help="follow a job live: its state changes and log lines, until it ends (exit 0: COMPLETE)"
    )
    watch.add_argument("job_id", metavar="JOB_ID")
    watch.add_argument(
        "--url", help="the API's base URL (default: WML_PUBLIC_URL, or http://WML_HOST:WML_PORT)"
    )
    watch.add_argument("--token", help="the consumer token (default: WML_TOKEN)")

    sub.add_parser(
        "migrate",
        help="bring the database (WML_DATABASE_URL) to the newest schema and exit; `serve` does it too, "
        "under the same lock, so running it first (a Helm pre-upgrade hook) is optional",
    )

    export = sub.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")

    consumers = sub.add_parser("consumers", help="operator commands for consumers").add_subparsers(
        dest="action", required=True
    )
    add_operator_commands(consumers, sub, common)
    assets = sub.add_parser("assets", help="asset catalogue tools").add_subparsers(
        dest="action", required=True
    )
    convert = assets.add_parser(
        "convert",
        help="print an asset file (the original middle-layer's service description JSON, or our YAML) "
        "as asset YAML with every field explicit",
    )
    convert.add_argument("file", type=Path, metavar="FILE")
    _add_sidecar(sub)
    return p


def _version() -> str:
    try:
        return version("workflow-middlelayer")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _add_sidecar(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sidecar = sub.add_parser(
        "sidecar",
        help="the data side-car: stage a job's inputs in or its outputs out (storage from WML_STORAGE)",
        description="Exit codes: 0 done, 1 unexpected failure, 2 usage, 3 input missing or corrupt, "
        "4 required output missing, 5 storage unavailable.",
    ).add_subparsers(dest="action", required=True)
    for action, what, root in (
        ("stage-in", "fetch, verify and place the inputs", "the inputs directory"),
        ("stage-out", "upload the outputs, then write the output manifest", "the outputs directory"),
    ):
        step = sidecar.add_parser(action, help=what)
        step.add_argument("--manifest", type=Path, required=True, help=f"the {action} manifest (JSON)")
        step.add_argument("--root", type=Path, required=True, help=f"{root} the manifest's paths are in")
        step.add_argument(
            "--attempts", type=int, default=4, help="tries per transfer while storage is unavailable (4)"
        )
        if action == "stage-out":
            step.add_argument(
                "--termination-message",
                type=Path,
                help="file for the output manifest line as Kubernetes termination message "
                "(default: $WML_TERMINATION_MESSAGE_PATH, else /dev/termination-log if it exists)",
            )


def main(argv: list[str] | None = None) -> int:
    # Everything this command prints (demo and watch progress, log lines) is read as it happens, often
    # through a pipe (`make demo | tee`, a container's log): a line must leave when it is printed, not when
    # a block buffer fills, whether or not PYTHONUNBUFFERED is set.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as e:  # name the settings, never echo their values (they may be secrets)
        names = [setting_name(err["loc"]) for err in e.errors()]
        problems = "; ".join(f"{name}: {err['msg']}" for name, err in zip(names, e.errors(), strict=True))
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _dispatch(args, settings)
    except (CatalogError, AlreadyServingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DomainError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    local_create = args.command == "consumers" and args.action == "create" and not (args.url or settings.url)
    if getattr(args, "client_command", None) is not None and not local_create:
        return run_client_command(settings, args, args.client_command)
    if args.command == "serve":
        from wml.server import serve

        updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
        serve(settings.model_copy(update=updates))
        return 0
    if args.command == "demo":
        from wml.demo import run_demo

        return asyncio.run(
            run_demo(
                settings,
                data_dir=args.data_dir,
                sleep=args.sleep,
                dialect=args.dialect,
                verbose=args.verbose,
                workflow=args.workflow,
            )
        )
    if args.command == "watch":
        return asyncio.run(_watch(settings, args.job_id, args.url, args.token))
    if args.command == "migrate":
        from core.store.engine import migrate

        settings.secure_data_dir()
        asyncio.run(migrate(settings.resolved_database_url()))
        print("the database schema is at the newest revision")
        return 0
    if args.command == "export-schema":
        from graphql_api.schema import build_schema

        sdl = build_schema().as_str() + "\n"
        if args.output:
            args.output.write_text(sdl, encoding="utf-8")
        else:
            sys.stdout.write(sdl)
        return 0
    if args.command == "sidecar":
        from sidecar.main import run_step

        credentials = settings.storage_credentials()
        return run_step(
            args.action,
            args.manifest,
            args.root,
            storage_url=settings.storage,
            credentials=credentials,
            attempts=args.attempts,
            termination_message=getattr(args, "termination_message", None),
        )
    if args.command == "assets" and args.action == "convert":
        from core.assets import asset_yaml, load_asset_file

        sys.stdout.write(asset_yaml(load_asset_file(args.file), source=args.file.name))
        return 0
    if local_create:
        return asyncio.run(_create_consumer(settings, args.name, args.asset, args.expires_in, args.json))
    raise AssertionError(f"unhandled command {args.command}")


async def _watch(settings: Settings, job_id: str, url: str | None, token: str | None) -> int:
    from wml.client.api import ApiError
    from wml.watch import watch

    token = token or (settings.token.get_secret_value() if settings.token else None)
    if not token:
        print("error: no token: pass --token or set WML_TOKEN", file=sys.stderr)
        return 2
    try:
        return await watch(url or settings.url or settings.resolved_public_url(), token, job_id)
    except (ApiError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


async def _create_consumer(
    settings: Settings, name: str, assets: list[str], lifetime: int | None, json_mode: bool
) -> int:
    """``wml consumers create`` without a URL: straight into the database."""
    from core.grants import create_consumer_with_grants
    from core.services import open_store
    from wml.commands.common import Output
    from wml.commands.operator import print_created

    store = await open_store(settings)
    try:
        issued = await create_consumer_with_grants(store, name, assets, lifetime=lifetime)
    finally:
        await store.engine.dispose()
    consumer = issued[0].consumer
    print_created(
        Output.create(json_mode),
        {
            "consumer": {
                "id": consumer.id,
                "name": consumer.name,
                "createdAt": consumer.created_at.isoformat(),
            },
            "tokens": [
                {
                    "token": item.token,
                    "grant": {
                        "id": item.grant.id,
                        "consumerId": consumer.id,
                        "assetId": item.grant.asset_id,
                        "state": item.grant.state.value,
                        "expiresAt": item.grant.expires_at.isoformat() if item.grant.expires_at else None,
                    },
                }
                for item in issued
            ],
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
