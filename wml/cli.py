"""The ``wml`` command: serve, demo, export-schema, and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from core.assets import CatalogError
from core.errors import DomainError
from core.settings import Settings
from wml.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wml", description="Workflow middle-layer: sell container workloads.")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server (settings from WML_* variables)")
    serve.add_argument("--host", help="listen address (WML_HOST)")
    serve.add_argument("--port", type=int, help="listen port (WML_PORT)")

    demo = sub.add_parser("demo", help="run the dummy job end to end on a throw-away embedded server")
    demo.add_argument(
        "--data-dir", type=Path, help="keep the demo's data here instead of a temporary directory"
    )
    demo.add_argument("--sleep", type=int, default=3, help="seconds the dummy job runs (default 3)")
    demo.add_argument("--verbose", action="store_true", help="show the server's log lines too")

    export = sub.add_parser("export-schema", help="print the GraphQL schema (SDL)")
    export.add_argument("--output", "-o", type=Path, help="write to this file instead of stdout")

    consumers = sub.add_parser("consumers", help="operator commands for consumers").add_subparsers(
        dest="action", required=True
    )
    create = consumers.add_parser(
        "create", help="create a consumer with a grant per asset; prints its tokens once"
    )
    create.add_argument("name")
    create.add_argument("--asset", action="append", required=True, help="asset id (repeatable)")
    create.add_argument("--expires-in", type=int, help="grant lifetime in seconds (default: no expiry)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return _dispatch(args, settings)
    except CatalogError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DomainError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        from wml.server import serve

        updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
        serve(settings.model_copy(update=updates))
        return 0
    if args.command == "demo":
        from wml.demo import run_demo

        return asyncio.run(run_demo(settings, data_dir=args.data_dir, sleep=args.sleep, verbose=args.verbose))
    if args.command == "export-schema":
        from graphql_api.schema import build_schema

        sdl = build_schema().as_str() + "\n"
        if args.output:
            args.output.write_text(sdl, encoding="utf-8")
        else:
            sys.stdout.write(sdl)
        return 0
    if args.command == "consumers" and args.action == "create":
        return asyncio.run(_create_consumer(settings, args.name, args.asset, args.expires_in))
    raise AssertionError(f"unhandled command {args.command}")


async def _create_consumer(settings: Settings, name: str, assets: list[str], lifetime: int | None) -> int:
    from core.grants import create_consumer_with_grants
    from core.services import open_store

    store = await open_store(settings)
    try:
        issued = await create_consumer_with_grants(store, name, assets, lifetime=lifetime)
    finally:
        await store.engine.dispose()
    print(f"consumer {issued[0].consumer.id} ({name})")
    for item in issued:
        expiry = item.grant.expires_at.isoformat() if item.grant.expires_at else "never"
        print(f"  asset {item.grant.asset_id}: grant {item.grant.id}, expires {expiry}")
        print(f"    token (shown once): {item.token}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
