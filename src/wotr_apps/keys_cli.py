"""`wotr keys`: create, list and revoke the write keys of the ingest endpoints.

The keys live in the profile's key store (`embedded`: `<WOTR_DATA_DIR>/keys.db`; `local`:
table `write_keys` in PostgreSQL), which every API process reads: a key created here
works at once, a key revoked here stops working within `WOTR_WRITE_KEY_CACHE_SECONDS`
on every API process, without a restart. A key is printed once, at creation; only its
SHA-256 is stored, so a lost key cannot be shown again: revoke it and create another.

    wotr keys create --name web [--source web-app] [--quiet]
    wotr keys list
    wotr keys revoke KEY_ID
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from wotr_domain.errors import ConfigError, InvalidEvent, NotFound, Unavailable
from wotr_domain.models import WriteKey
from wotr_domain.ports import KeyStore
from wotr_domain.services.ingest import validate_text_field

__all__ = ["create_key", "main", "parser"]


def create_key(store: KeyStore, name: str, source: str | None = None) -> tuple[WriteKey, str]:
    """Store a new key named `name` (stamping `source` on its events, if given); returns
    the stored record and the key itself, which nothing stores."""
    if not name.strip():
        raise InvalidEvent("the key needs a name", field="name")
    validate_text_field("name", name)
    validate_text_field("source", source)
    record, key = WriteKey.issue(name.strip(), datetime.now(UTC), source)
    store.add(record)
    return record, key


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wotr keys", description="Manage the write keys of the ingest endpoints "
                                "(enforced when WOTR_REQUIRE_WRITE_KEY=true).")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="create a key and print it (once: only its hash is kept)")
    create.add_argument("--name", required=True, help="what the key is for (e.g. the sending app)")
    create.add_argument("--source", help="stamp this source on every event sent with the key (wins over the event's)")
    create.add_argument("-q", "--quiet", action="store_true", help="print the key alone (for scripts)")
    sub.add_parser("list", help="list the keys (ids, names, sources, revoked or not; never the keys)")
    revoke = sub.add_parser("revoke", help="revoke a key: refused on every API process within the cache time")
    revoke.add_argument("key_id", help="the key's id (the 16 hex digits after wk_)")
    return p


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _run(args: argparse.Namespace, store: KeyStore) -> int:
    if args.action == "create":
        record, key = create_key(store, args.name, args.source)
        if args.quiet:
            print(key)
        else:
            print(f"key id:  {record.id}")
            print(f"name:    {record.name}")
            print(f"source:  {record.source or '-'}")
            print(f"key:     {key}")
            print("The key is shown this once; wotr keeps only its SHA-256.", file=sys.stderr)
        return 0
    if args.action == "list":
        rows = [(k.id, k.name, k.source or "-", _when(k.created_at), _when(k.revoked_at)) for k in store.list()]
        header = ("KEY ID", "NAME", "SOURCE", "CREATED", "REVOKED")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        return 0
    key_id = args.key_id.removeprefix("wk_")[:16]
    record = store.revoke(key_id, datetime.now(UTC))
    print(f"revoked {record.id} ({record.name}) at {_when(record.revoked_at)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit 0 on success, 1 for an unknown key or a bad name/source, 2 configuration, 3 outage."""
    args = parser().parse_args(argv)
    from .container import build_container
    from .settings import Settings

    try:
        settings = Settings.from_env()
        if settings.profile == "memory":
            raise ConfigError("WOTR_PROFILE", "memory keeps keys inside the API process: use embedded or local")
        container = build_container(settings)
        try:
            return _run(args, container.key_store())
        finally:
            container.shutdown_resources()
    except ConfigError as e:
        print(f"wotr keys: configuration error: {e}", file=sys.stderr)
        return 2
    except Unavailable as e:
        print(f"wotr keys: {e}", file=sys.stderr)
        return 3
    except (NotFound, InvalidEvent) as e:
        print(f"wotr keys: {e}", file=sys.stderr)
        return 1
