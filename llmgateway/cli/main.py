"""The `llmgateway` command: serve, manage keys, read usage.

Key, limit and usage commands work on the store directly, so they run beside a live gateway
(SQLite is in WAL mode). With Redis configured, a revocation or a limit change reaches every
running replica at once; without it, within `keys.cache_ttl_seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence

from .. import audit
from ..auth.key_service import KeyBook, configured_or_stored_models, stored_view
from ..config import LIMIT_NAMES, Config, ConfigError, load_config
from ..errors import GatewayError
from ..fields import KeyNamed
from ..limits.rules import merged
from ..ops.log import setup_logging
from ..records import KeyRecord
from ..store import BUCKETS, Store, StoreError
from ..store.base import GROUPS
from . import admin as cli_admin
from .admin import MAX_LIST, cli_actor
from .common import CliError, announce_change, iso, open_configured, parse_time, positive_float


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    if args.serve is None:
        raise CliError("serve: this entry point has no web layer; run `llmgateway serve`")
    asyncio.run(args.serve(config))
    return 0


def cmd_keys_create(args: argparse.Namespace, config: Config) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else []
    store = open_configured(config)
    known = configured_or_stored_models(config, store) if models else set()
    unknown = [m for m in models if m not in known]
    if unknown:
        raise CliError(f"unknown model {unknown[0]!r} (known: {', '.join(sorted(known)) or 'none'})")
    try:
        key, record = KeyBook(store).create(cli_actor(), args.user, _key_name(args.name), models, args.expires_days)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(key)
    print(f"created {record.id} for {record.owner} ({record.prefix}...); the key is shown only once", file=sys.stderr)
    return 0


def _key_name(name: str) -> str:
    """--name, held to the portal's and the admin API's rule (`KeyName`): at most 100 characters,
    no control characters. An empty one is refused by `make_record`, in the words the CLI has always used."""
    if not name.strip():
        return name
    try:
        return KeyNamed.parse({"name": name}).name
    except GatewayError as exc:
        raise CliError(f"--name: {exc.message}") from None


def cmd_keys_list(args: argparse.Namespace, config: Config) -> int:
    """`keys list` and `admin keys list` (the latter filtered and capped in the store)."""
    now = time.time()
    store = open_configured(config)
    if getattr(args, "admin_list", False):
        if not 1 <= args.limit <= MAX_LIST:
            raise CliError(f"--limit must be from 1 to {MAX_LIST}")
        keys, total = store.find_keys(args.user, args.model, args.status, args.search, now, 0, args.limit)
        if total > len(keys):
            print(f"showing {len(keys)} of {total} keys (raise --limit or filter)", file=sys.stderr)
    else:
        keys = store.list_keys(owner=args.user, active_only=args.active)
    if args.json:
        print(json.dumps([stored_view(r, now) for r in keys], indent=2))
        return 0
    print(f"{'ID':<21} {'USER':<16} {'NAME':<16} {'PREFIX':<14} {'STATUS':<8} {'CREATED':<21} {'EXPIRES':<21} "
          f"{'LAST USED':<21} MODELS")
    for r in keys:
        print(f"{r.id:<21} {r.owner:<16} {r.name:<16} {r.prefix:<14} {r.status(now):<8} "
              f"{iso(r.created):<21} {iso(r.expires):<21} {iso(r.last_used):<21} {','.join(r.models) or '*'}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace, config: Config) -> int:
    record = KeyBook(open_configured(config)).revoke(cli_actor(), args.key_id)
    if record is None:
        raise _no_key(args.key_id)
    print(f"revoked {record.id} ({record.owner}/{record.name})", file=sys.stderr)
    announce_change(config, "key", record.id, [record.hash])
    return 0


def cmd_limits_set(args: argparse.Namespace, config: Config) -> int:
    store = open_configured(config)
    try:
        changes = {name: float(v) for name, v in (item.split("=", 1) for item in args.limit)}
    except ValueError:
        raise CliError("limits are NAME=NUMBER, e.g. requests_per_minute=60 (0 = no limit)") from None
    unknown = sorted(set(changes) - set(LIMIT_NAMES))
    if unknown:
        raise CliError(f"unknown limit {unknown[0]!r} (known: {', '.join(LIMIT_NAMES)})")
    if any(v < 0 for v in changes.values()):
        raise CliError("limits must be >= 0 (0 = no limit)")
    if args.key:
        limits = {**_key(store, args.key).limits, **changes}
        key = KeyBook(store).change(cli_actor(), args.key, {"limits": limits})
        if key is None:
            raise _no_key(args.key)
        announce_change(config, "key", args.key, [key.hash])
    else:
        user = store.get_user(args.user)
        limits = {**(user.limits if user else {}), **changes}
        store.set_user_limits(args.user, limits)
        announce_change(config, "user", args.user, [k.hash for k in store.list_keys(owner=args.user)])
        audit.record(store, cli_actor(), "user.update", args.user, {"changes": {"limits": limits}})
    print(json.dumps(limits, sort_keys=True))
    return 0


def _key(store: Store, key_id: str) -> KeyRecord:
    record = store.get_key(key_id)
    if record is not None:
        return record
    raise _no_key(key_id)


def _no_key(key_id: str) -> CliError:
    return CliError(f"no key with id {key_id!r} (see 'llmgateway keys list')")


def cmd_limits_show(args: argparse.Namespace, config: Config) -> int:
    store = open_configured(config)
    if args.key:
        own, defaults = _key(store, args.key).limits, config.limits.key
    else:
        user = store.get_user(args.user)
        own, defaults = (user.limits if user else {}), config.limits.user
    print(json.dumps({"defaults": defaults, "overrides": own, "effective": merged(defaults, own)}, sort_keys=True))
    return 0


def cmd_rollups_rebuild(args: argparse.Namespace, config: Config) -> int:
    since = parse_time(args.since)
    until = parse_time(args.until) if args.until else time.time()
    if until <= since:
        raise CliError("--until must be later than --since")
    store = open_configured(config)
    for bucket, size in BUCKETS.items():
        written = store.rollup_usage(bucket, since // size * size, until)
        print(f"{bucket}: {written} rows", file=sys.stderr)
    return 0


def cmd_usage(args: argparse.Namespace, config: Config) -> int:
    since = parse_time(args.since) if args.since else 0.0
    until = parse_time(args.until) if args.until else None
    if until is not None and until <= since:
        raise CliError("--until must be later than --since")
    rows = open_configured(config).usage_summary(args.by, since, until, user=args.user, key_id=args.key,
                                                 model=args.model)
    totals = {
        "requests": sum(r["requests"] for r in rows),
        "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
        "completion_tokens": sum(r["completion_tokens"] for r in rows),
        "cost": round(sum(r["cost"] for r in rows), 10),
        "estimated": sum(r["estimated"] for r in rows),
    }
    if args.json:
        print(json.dumps({"by": args.by, "since": since, "until": until, "rows": rows, "totals": totals}, indent=2))
        return 0
    print(f"{args.by.upper():<28} {'REQUESTS':>9} {'PROMPT':>12} {'COMPLETION':>12} {'COST':>12} {'ESTIMATED':>9}")
    for r in rows + [dict(totals, group="TOTAL")]:
        print(f"{str(r['group']):<28} {r['requests']:>9} {r['prompt_tokens']:>12} {r['completion_tokens']:>12} "
              f"{r['cost']:>12.4f} {r['estimated']:>9}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmgateway", description="OpenAI-compatible LLM gateway")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: $LLMGW_CONFIG, else built-in defaults)")
    common.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="create, list and revoke API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", parents=[common], help="create a key; prints only the key")
    create.add_argument("--user", required=True, help="owner of the key")
    create.add_argument("--name", required=True, help="a name to recognise the key by")
    create.add_argument("--models", help="comma-separated model ids this key may use (default: all)")
    create.add_argument("--expires-days", type=positive_float, help="expire after this many days")
    create.set_defaults(func=cmd_keys_create)
    listing = keys.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    listing.add_argument("--user", help="only this user's keys")
    listing.add_argument("--active", action="store_true", help="only keys not revoked")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("key_id", help="the key id, as 'keys list' shows it")
    revoke.set_defaults(func=cmd_keys_revoke)

    limits = sub.add_parser("limits", help="per-user and per-key limit overrides").add_subparsers(
        dest="limits", required=True)
    for name, func, text in (("set", cmd_limits_set, "set overrides: NAME=NUMBER ... (0 = no limit)"),
                             ("show", cmd_limits_show, "show defaults, overrides and what applies")):
        command = limits.add_parser(name, parents=[common], help=text)
        who = command.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", help="a user's overrides (all their keys together)")
        who.add_argument("--key", help="a key's overrides, by key id")
        if name == "set":
            command.add_argument("limit", nargs="+", help=f"NAME=NUMBER; names: {', '.join(LIMIT_NAMES)}")
        command.set_defaults(func=func)

    rollups = sub.add_parser("rollups", help="hourly and daily usage rollups").add_subparsers(
        dest="rollups", required=True)
    rebuild = rollups.add_parser("rebuild", parents=[common], help="rebuild rollups from raw events")
    rebuild.add_argument("--since", required=True, help="ISO date/time (UTC) or a span back from now: 7d")
    rebuild.add_argument("--until", help="ISO date/time (UTC) or a span back from now (default: now)")
    rebuild.set_defaults(func=cmd_rollups_rebuild)

    usage = sub.add_parser("usage", parents=[common], help="token usage and cost, grouped")
    usage.add_argument("--by", choices=GROUPS, default="user", help="group by (default: user)")
    usage.add_argument("--since", help="ISO date/time (UTC) or a span back from now: 30m, 24h, 7d")
    usage.add_argument("--until", help="ISO date/time (UTC) or a span back from now")
    usage.add_argument("--user", help="only this user")
    usage.add_argument("--key", help="only this key id")
    usage.add_argument("--model", help="only this model")
    usage.add_argument("--json", action="store_true", help="print JSON")
    usage.set_defaults(func=cmd_usage)
    cli_admin.add_parsers(sub, common, cmd_keys_list, cmd_keys_revoke)
    return parser


def main(argv: Sequence[str] | None = None, serve: Callable[[Config], Awaitable[None]] | None = None) -> int:
    """Run one command. `serve` is the web layer's server, handed in by the entry point
    (`handlers.app.main`), so that nothing in the core imports the web layer."""
    args = build_parser().parse_args(argv)
    args.serve = serve
    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
        return args.func(args, config)
    except (ConfigError, CliError) as exc:
        print(f"llmgateway: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:
        print(f"llmgateway: store error: {exc}", file=sys.stderr)
        return 1
