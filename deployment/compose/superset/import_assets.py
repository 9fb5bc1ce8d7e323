"""Import the wotr Superset assets (assets/: database, dataset, charts, dashboard).

Run by bootstrap.sh at every Superset start, with the Python that runs Superset:

    python import_assets.py /app/wotr/assets

The bundle is the unzipped form of a Superset export ("assets" type). It is imported with
Superset's own ImportAssetsCommand, which overwrites what Superset holds under the same
UUIDs: the files are the source of truth, edits made in the UI are replaced at the next
start. The database's URI in the bundle has a masked password; it is rebuilt here from
CLICKHOUSE_USER, CLICKHOUSE_HOST, CLICKHOUSE_PORT and CLICKHOUSE_DB, and CLICKHOUSE_PASSWORD
is handed to the import separately (stored encrypted by Superset, never in the files).
Imports are done as SUPERSET_ADMIN_USER, who owns the charts and the dashboard.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import quote

import yaml

PASSWORD_MASK = "XXXXXXXXXX"  # what Superset writes for a password in an export


def read_bundle(root: Path) -> dict[str, str]:
    """The bundle as Superset's importers take it: relative path -> YAML text."""
    contents = {path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
                for path in sorted(root.rglob("*.yaml"))}
    if "metadata.yaml" not in contents:
        raise SystemExit(f"import_assets: {root} has no metadata.yaml; is it a Superset export?")
    return contents


def with_connection(contents: dict[str, str], env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """Point every database of the bundle at the ClickHouse of this deployment."""
    uri = "clickhousedb://{}:{}@{}:{}/{}".format(
        quote(env["CLICKHOUSE_USER"], safe=""), PASSWORD_MASK, env["CLICKHOUSE_HOST"], env["CLICKHOUSE_PORT"],
        env["CLICKHOUSE_DB"])
    out = dict(contents)
    for name, text in contents.items():
        if name.startswith("databases/"):
            config = yaml.safe_load(text)
            config["sqlalchemy_uri"] = uri
            out[name] = yaml.safe_dump(config, sort_keys=False)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: import_assets.py BUNDLE_DIRECTORY", file=sys.stderr)
        return 2
    root = Path(argv[1])
    contents = with_connection(read_bundle(root), os.environ)
    passwords = {name: os.environ["CLICKHOUSE_PASSWORD"] for name in contents if name.startswith("databases/")}

    from flask import g

    from superset import security_manager
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset.commands.importers.v1.assets import ImportAssetsCommand

        user = security_manager.find_user(username=os.environ["SUPERSET_ADMIN_USER"])
        if user is None:
            print(f"import_assets: no Superset user {os.environ['SUPERSET_ADMIN_USER']!r}", file=sys.stderr)
            return 1
        g.user = user
        ImportAssetsCommand(contents, passwords=passwords).run()
    kinds = ("databases", "datasets", "charts", "dashboards")
    counts = ", ".join(f"{sum(n.startswith(k + '/') for n in contents)} {k}" for k in kinds)
    print(f"import_assets: imported {counts} from {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
