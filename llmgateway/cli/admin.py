"""`llmgateway admin ...`: what a first install needs without a browser.

Grant the first admin (who then manages everything in the admin UI), create and revoke admin
tokens for scripts, list and revoke keys, export usage as CSV. Like the other commands these
work on the store directly and are recorded in the audit log as `cli:<os user>`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from collections.abc import Callable
from datetime import timedelta

from .. import audit
from ..audit import Actor
from ..auth.admin_tokens import make_token, token_view
from ..config import Config
from ..errors import GatewayError
from ..inputs import day_range, midnight
from ..records import UserRecord
from ..store.base import GROUPS, KEY_STATUSES
from ..usage.reports import live_since, to_csv
from .common import CliError, iso, open_configured, positive_float

Command = Callable[[argparse.Namespace, Config], int]

MAX_LIST = 100_000


def cli_actor() -> Actor:
    """Who runs the CLI: the operating-system user, on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"cli:{user}", "cli", socket.gethostname())


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, keys_list: Command,
                keys_revoke: Command) -> None:
    """Mount `admin ...`; its key commands are the `keys` commands' own (passed in)."""
    admin = sub.add_parser("admin", help="first-install administration: admins, admin tokens, keys, usage export")
    commands = admin.add_subparsers(dest="admin", required=True)
    for name, func, text in (("grant", cmd_grant, "make a person an admin (created if they never logged in)"),
                             ("ungrant", cmd_ungrant, "remove the admin role given by an admin or the CLI")):
        command = commands.add_parser(name, parents=[common], help=text)
        command.add_argument("user", help="the username, as the IdP names the person")
        command.set_defaults(func=func)

    token = commands.add_parser("token", help="admin API tokens").add_subparsers(dest="token", required=True)
    create = token.add_parser("create", parents=[common], help="create an admin token; prints only the token")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument("--owner", required=True,
                        help="the admin it belongs to: it acts with their rights, and stops when they lose them")
    create.add_argument("--expires-days", type=positive_float, help="lifetime (default: admin.token_days)")
    create.set_defaults(func=cmd_token_create)
    listing = token.add_parser("list", parents=[common], help="list admin tokens (never the tokens themselves)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_token_list)
    revoke = token.add_parser("revoke", parents=[common], help="revoke an admin token by id")
    revoke.add_argument("token_id")
    revoke.set_defaults(func=cmd_token_revoke)

    keys = commands.add_parser("keys", help="list and revoke any key").add_subparsers(dest="keys", required=True)
    klist = keys.add_parser("list", parents=[common], help="list keys, newest first, filtered in the store")
    klist.add_argument("--user", help="only this person's keys")
    klist.add_argument("--model", help="only keys that may use this model")
    klist.add_argument("--status", choices=KEY_STATUSES, help="only keys in this state")
    klist.add_argument("--search", help="part of the name, id or prefix")
    klist.add_argument("--limit", type=int, default=100, help=f"at most this many (default 100, max {MAX_LIST})")
    klist.add_argument("--json", action="store_true", help="print JSON")
    klist.set_defaults(func=keys_list, admin_list=True)
    krevoke = keys.add_parser("revoke", parents=[common], help="revoke a key by id")
    krevoke.add_argument("key_id")
    krevoke.set_defaults(func=keys_revoke)

    usage = commands.add_parser("usage", help="usage reports").add_subparsers(dest="usage", required=True)
    export = usage.add_parser("export", parents=[common], help="usage as CSV, one row per group")
    export.add_argument("--by", choices=GROUPS, default="user", help="group by (default: user)")
    export.add_argument("--since", help="first UTC day, YYYY-MM-DD (default: 30 days ago)")
    export.add_argument("--until", help="last UTC day, YYYY-MM-DD (default: today)")
    export.add_argument("--user", help="only this person")
    export.add_argument("--key", help="only this key id")
    export.add_argument("--model", help="only this model")
    export.set_defaults(func=cmd_usage_export)


def cmd_grant(args: argparse.Namespace, config: Config) -> int:
    store = open_configured(config)
    if store.get_user(args.user) is None:
        store.upsert_user(UserRecord(args.user, created=time.time()))
    store.update_user(args.user, {"admin_granted": True})
    audit.record(store, cli_actor(), "user.update", args.user, {"changes": {"admin_granted": True}})
    print(f"{args.user} is now an admin", file=sys.stderr)
    return 0


def cmd_ungrant(args: argparse.Namespace, config: Config) -> int:
    store = open_configured(config)
    user = store.get_user(args.user)
    if user is None:
        raise CliError(f"no user {args.user!r}")
    store.update_user(args.user, {"admin_granted": False})
    audit.record(store, cli_actor(), "user.update", args.user, {"changes": {"admin_granted": False}})
    note = " (still an admin by the IdP's admin rule)" if user.is_admin else ""
    print(f"{args.user} no longer has the granted admin role{note}", file=sys.stderr)
    return 0


def cmd_token_create(args: argparse.Namespace, config: Config) -> int:
    days = args.expires_days or config.admin.token_days
    if days > config.admin.max_token_days:
        raise CliError(f"--expires-days must be at most {config.admin.max_token_days:g} (admin.max_token_days)")
    if not args.name.strip():
        raise CliError("--name must not be empty")
    store = open_configured(config)
    owner = store.get_user(args.owner)
    if owner is None or not owner.admin or owner.disabled:
        raise CliError(f"--owner: {args.owner!r} is not an enabled admin (llmgateway admin grant {args.owner} first)")
    actor = cli_actor()
    token, record = make_token(args.name.strip(), actor.name, days, args.owner)
    store.insert_admin_token(record)
    audit.record(store, actor, "token.create", record.id,
                 {"name": record.name, "owner": args.owner, "expires": record.expires})
    print(token)
    print(f"created admin token {record.id} ({record.prefix}...); it is shown only once", file=sys.stderr)
    return 0


def cmd_token_list(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    tokens = [token_view(t, now) for t in open_configured(config).list_admin_tokens()]
    if args.json:
        print(json.dumps(tokens, indent=2))
        return 0
    print(f"{'ID':<21} {'NAME':<20} {'PREFIX':<17} {'STATUS':<8} {'OWNER':<16} {'EXPIRES':<21} LAST USED")
    for t in tokens:
        print(f"{t['id']:<21} {t['name']:<20} {t['prefix']:<17} {t['status']:<8} {t['owner'] or '-':<16} "
              f"{iso(t['expires']):<21} {iso(t['last_used'])}")
    return 0


def cmd_token_revoke(args: argparse.Namespace, config: Config) -> int:
    store = open_configured(config)
    record = store.revoke_admin_token(args.token_id)
    if record is None:
        raise CliError(f"no admin token with id {args.token_id!r} (see 'llmgateway admin token list')")
    audit.record(store, cli_actor(), "token.revoke", record.id, {"name": record.name})
    print(f"revoked admin token {record.id} ({record.name})", file=sys.stderr)
    return 0


def cmd_usage_export(args: argparse.Namespace, config: Config) -> int:
    now = time.time()
    try:
        first, last = day_range(args.since, args.until, 30, now)
    except GatewayError as exc:
        raise CliError(f"--{exc.param}: {exc.message}") from None
    rows, _, _ = open_configured(config).usage_report(args.by, midnight(first), live_since(now),
                                             midnight(last + timedelta(days=1)), args.user, args.key, args.model)
    sys.stdout.write(to_csv(rows))
    return 0
