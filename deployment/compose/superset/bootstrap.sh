#!/bin/sh
# Superset start-up for the wotr compose stack: migrate Superset's own metadata database,
# create the admin user, register wotr's ClickHouse database, import the wotr assets (the
# dataset on wotr.ingested_data, its charts and the dashboard "wotr events"), then serve on
# port 8088. Every step is idempotent, so a restart repeats them harmlessly.
set -eu

superset db upgrade
superset fab create-admin \
    --username "$SUPERSET_ADMIN_USER" --password "$SUPERSET_ADMIN_PASSWORD" \
    --firstname wotr --lastname admin --email "$SUPERSET_ADMIN_USER@wotr.invalid" \
    || echo "bootstrap: admin user not created (it exists already)"
superset init

# clickhouse-connect's SQLAlchemy URL: clickhousedb://user:password@host:port/database
uri=$(python -c 'import os; from urllib.parse import quote; e = os.environ
print("clickhousedb://%s:%s@%s:%s/%s" % (quote(e["CLICKHOUSE_USER"], safe=""), quote(e["CLICKHOUSE_PASSWORD"], safe=""),
      e["CLICKHOUSE_HOST"], e["CLICKHOUSE_PORT"], e["CLICKHOUSE_DB"]))')
# -d / -u: the long option names changed spelling between Superset releases.
superset set-database-uri -d "wotr ClickHouse" -u "$uri"

# assets/ is a Superset export bundle under version control; the import overwrites what
# Superset holds under its UUIDs (the database above keeps its name and takes the bundle's
# UUID). It runs with the Python that runs Superset.
"$(dirname "$(command -v superset)")/python" /app/wotr/import_assets.py /app/wotr/assets

exec /usr/bin/run-server.sh
