"""The Superset assets of the compose deployment (deployment/compose/superset/assets/).

The bundle is Superset's export format, unzipped: `metadata.yaml`, `databases/`,
`datasets/<database>/`, `charts/`, `dashboards/`, imported at every Superset start by
`import_assets.py` (called from `bootstrap.sh`) with Superset's own ImportAssetsCommand.
Superset itself is too heavy for this suite, so the files are checked here against what
its importer requires (the fields of its ImportV1 schemas in Superset 4.1, the version the
image pins), against each other (every UUID reference resolves), and against the table
as the code creates it (`wotr_adapters.clickhouse`): the dataset's physical columns are
exactly the table's, every SQL expression names only its columns, and every expression
and each chart's query run in ClickHouse (the in-process engine) on a table created by
the adapter itself. Each checker is also run on a broken example.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from wotr_adapters.clickhouse import TABLE, _ddl
from wotr_adapters.connections import ClickHouseConnection

ROOT = Path(__file__).resolve().parents[2]
SUPERSET_DIR = ROOT / "deployment" / "compose" / "superset"
ASSETS = SUPERSET_DIR / "assets"
COMPOSE_FILE = ROOT / "deployment" / "compose" / "docker-compose.yml"
PASSWORD_MASK = "XXXXXXXXXX"
DATABASE_NAME = "wotr ClickHouse"  # the name bootstrap.sh registers with set-database-uri

# Superset 4.1's import schemas (superset/*/schemas.py, ImportV1*Schema): required fields and
# every field they accept; marshmallow refuses any other key, so a misspelt one fails the import.
SCHEMAS: dict[str, tuple[set[str], set[str]]] = {
    "metadata": ({"version"}, {"version", "type", "timestamp"}),
    "databases": ({"database_name", "sqlalchemy_uri", "uuid", "version"}, {
        "allow_csv_upload", "allow_ctas", "allow_cvas", "allow_dml", "allow_run_async", "cache_timeout",
        "database_name", "expose_in_sqllab", "external_url", "extra", "is_managed_externally", "password",
        "sqlalchemy_uri", "ssh_tunnel", "uuid", "version"}),
    "database_extra": (set(), {
        "allow_multi_catalog", "allows_virtual_table_explore", "cancel_query_on_windows_unload",
        "cost_estimate_enabled", "disable_data_preview", "disable_drill_to_detail", "engine_params",
        "metadata_cache_timeout", "metadata_params", "schemas_allowed_for_csv_upload", "version"}),
    "datasets": ({"database_uuid", "table_name", "uuid", "version"}, {
        "always_filter_main_dttm", "cache_timeout", "catalog", "columns", "data", "database_uuid",
        "default_endpoint", "description", "external_url", "extra", "fetch_values_predicate",
        "filter_select_enabled", "is_managed_externally", "main_dttm_col", "metrics", "normalize_columns",
        "offset", "params", "schema", "sql", "table_name", "template_params", "uuid", "version"}),
    "columns": ({"column_name"}, {
        "advanced_data_type", "column_name", "description", "expression", "extra", "filterable", "groupby",
        "is_active", "is_dttm", "python_date_format", "type", "verbose_name"}),
    "metrics": ({"expression", "metric_name"}, {
        "currency", "d3format", "description", "expression", "extra", "metric_name", "metric_type",
        "verbose_name", "warning_text"}),
    "charts": ({"dataset_uuid", "slice_name", "uuid", "version", "viz_type"}, {
        "cache_timeout", "certification_details", "certified_by", "dataset_uuid", "description", "external_url",
        "is_managed_externally", "params", "query_context", "slice_name", "uuid", "version", "viz_type"}),
    "dashboards": ({"dashboard_title", "uuid", "version"}, {
        "certification_details", "certified_by", "css", "dashboard_title", "description", "external_url",
        "is_managed_externally", "metadata", "position", "published", "slug", "uuid", "version"}),
}
IMPORT_VERSION = "1.0.0"
# Superset's ClickHouse engine spec (db_engine_specs/clickhouse.py): the SQL of each time grain.
TIME_GRAINS = {
    "PT1M": "toStartOfMinute(toDateTime({col}))",
    "PT5M": "toDateTime(intDiv(toUInt32(toDateTime({col})), 300)*300)",
    "PT1H": "toStartOfHour(toDateTime({col}))",
    "P1D": "toStartOfDay(toDateTime({col}))",
}


# ---------------------------------------------------------------------------------------
# The bundle and the table as the code creates it
# ---------------------------------------------------------------------------------------


def load_bundle(root: Path) -> dict[str, Any]:
    """Relative path -> parsed YAML, as Superset's importer keys its contents."""
    return {p.relative_to(root).as_posix(): yaml.safe_load(p.read_text(encoding="utf-8"))
            for p in sorted(root.rglob("*")) if p.is_file()}


def of_kind(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: config for name, config in bundle.items() if name.startswith(kind + "/")}


BUNDLE = load_bundle(ASSETS)
DATABASES, DATASETS = of_kind(BUNDLE, "databases"), of_kind(BUNDLE, "datasets")
CHARTS, DASHBOARDS = of_kind(BUNDLE, "charts"), of_kind(BUNDLE, "dashboards")


def table_columns(ddl: list[str]) -> dict[str, str]:
    """Column name -> ClickHouse type, from the adapter's CREATE TABLE of ingested_data."""
    (create,) = [s for s in ddl if re.search(rf"CREATE TABLE .*\.{TABLE}\b", s)]
    body = create[create.index("(") + 1:create.rindex(")", 0, create.index("ENGINE"))]
    columns = {}
    for line in body.splitlines():
        line = line.strip().rstrip(",")
        if not line:
            continue
        name, type_ = line.split(None, 1)
        columns[name] = re.sub(r"\s+DEFAULT\s+.*$", "", type_).strip()
    return columns


DATABASE = ClickHouseConnection().database  # the database wotr creates the table in
COLUMNS = table_columns(_ddl(DATABASE))


def test_table_columns_are_read_from_the_code():
    assert {"id", "created_at", "source", "type", "loaded_at"} <= set(COLUMNS)
    assert COLUMNS["created_at"] == "DateTime64(6, 'UTC')" and COLUMNS["loaded_at"] == "DateTime64(6, 'UTC')"


def test_bundle_has_every_kind_of_asset():
    assert set(BUNDLE) == {"metadata.yaml", *DATABASES, *DATASETS, *CHARTS, *DASHBOARDS}
    assert len(DATABASES) == 1 and len(DATASETS) == 1 and len(DASHBOARDS) == 1 and len(CHARTS) >= 4
    assert all(name.endswith(".yaml") for name in BUNDLE)
    metadata = BUNDLE["metadata.yaml"]
    assert metadata["version"] == IMPORT_VERSION and metadata["type"] == "assets"  # ImportAssetsCommand's type


# ---------------------------------------------------------------------------------------
# Required and known keys
# ---------------------------------------------------------------------------------------


def key_problems(kind: str, config: Any, where: str) -> list[str]:
    if not isinstance(config, dict):
        return [f"{where}: not a mapping"]
    required, known = SCHEMAS[kind]
    problems = [f"{where}: missing {key}" for key in sorted(required - set(config))]
    problems += [f"{where}: unknown key {key}" for key in sorted(set(config) - known)]
    return problems


def bundle_key_problems(bundle: dict[str, Any]) -> list[str]:
    problems = key_problems("metadata", bundle.get("metadata.yaml"), "metadata.yaml")
    for name, config in bundle.items():
        kind = name.split("/", 1)[0]
        if kind not in ("databases", "datasets", "charts", "dashboards"):
            continue
        problems += key_problems(kind, config, name)
        if not isinstance(config, dict):
            continue
        if config.get("version") != IMPORT_VERSION:
            problems.append(f"{name}: version {config.get('version')!r}, Superset imports {IMPORT_VERSION}")
        if kind == "databases" and config.get("extra") is not None:
            problems += key_problems("database_extra", config["extra"], f"{name} extra")
        if kind == "datasets":
            for column in config.get("columns") or []:
                problems += key_problems("columns", column, f"{name} column {column.get('column_name')}")
            for metric in config.get("metrics") or []:
                problems += key_problems("metrics", metric, f"{name} metric {metric.get('metric_name')}")
    return problems


def test_key_checker_rejects_missing_and_unknown_keys():
    broken = copy.deepcopy(BUNDLE)
    chart = next(iter(of_kind(broken, "charts")))
    del broken[chart]["slice_name"]
    broken[chart]["slice_nmae"] = "typo"
    dataset = next(iter(of_kind(broken, "datasets")))
    broken[dataset]["metrics"][0]["sql"] = "uniqExact(id)"
    assert bundle_key_problems(broken) == [
        f"{chart}: missing slice_name", f"{chart}: unknown key slice_nmae",
        f"{dataset} metric events: unknown key sql"]


def test_every_file_has_the_keys_superset_requires_and_no_other():
    assert bundle_key_problems(BUNDLE) == []


# ---------------------------------------------------------------------------------------
# UUID cross-references: dashboard -> charts -> dataset -> database
# ---------------------------------------------------------------------------------------


def chart_cells(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [node for node in dashboard["position"].values() if isinstance(node, dict) and node.get("type") == "CHART"]


def reference_problems(bundle: dict[str, Any]) -> list[str]:
    databases, datasets = of_kind(bundle, "databases"), of_kind(bundle, "datasets")
    charts, dashboards = of_kind(bundle, "charts"), of_kind(bundle, "dashboards")
    problems = []
    seen: dict[str, str] = {}
    for name, config in {**databases, **datasets, **charts, **dashboards}.items():
        value = str(config.get("uuid"))
        try:
            uuid.UUID(value)
        except ValueError:
            problems.append(f"{name}: uuid {value!r} is not a UUID")
        if value in seen:
            problems.append(f"{name}: uuid {value} also used by {seen[value]}")
        seen[value] = name
    database_uuids = {str(c["uuid"]) for c in databases.values()}
    dataset_uuids = {str(c["uuid"]) for c in datasets.values()}
    chart_by_uuid = {str(c["uuid"]): c for c in charts.values()}
    for name, config in datasets.items():
        if str(config.get("database_uuid")) not in database_uuids:
            problems.append(f"{name}: database_uuid {config.get('database_uuid')} is no database of the bundle")
        folder = name.split("/")[1]
        names = [c["database_name"] for c in databases.values() if str(c["uuid"]) == str(config.get("database_uuid"))]
        if names and folder != names[0].replace(" ", "_"):
            problems.append(f"{name}: filed under {folder}, its database is {names[0]!r}")
    for name, config in charts.items():
        if str(config.get("dataset_uuid")) not in dataset_uuids:
            problems.append(f"{name}: dataset_uuid {config.get('dataset_uuid')} is no dataset of the bundle")
    placed: set[str] = set()
    for name, config in dashboards.items():
        ids = [cell["meta"].get("chartId") for cell in chart_cells(config)]
        if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
            problems.append(f"{name}: chartIds {ids} are not distinct integers")
        for cell in chart_cells(config):
            ref = str(cell["meta"].get("uuid"))
            chart = chart_by_uuid.get(ref)
            if chart is None:
                problems.append(f"{name}: {cell['id']} names chart {ref}, which is not in the bundle")
                continue
            placed.add(ref)
            if cell["meta"].get("sliceName") != chart["slice_name"]:
                problems.append(f"{name}: {cell['id']} is titled {cell['meta'].get('sliceName')!r}, "
                                f"the chart is {chart['slice_name']!r}")
    problems += [f"{name}: on no dashboard" for name, config in charts.items() if str(config["uuid"]) not in placed]
    return problems


def test_reference_checker_rejects_dangling_and_duplicate_uuids():
    broken = copy.deepcopy(BUNDLE)
    chart_names = sorted(of_kind(broken, "charts"))
    broken[chart_names[0]]["dataset_uuid"] = str(uuid.uuid4())
    broken[chart_names[1]]["uuid"] = broken[chart_names[2]]["uuid"]
    (dataset,) = of_kind(broken, "datasets")
    broken[dataset]["database_uuid"] = "not-a-uuid"
    problems = reference_problems(broken)
    assert any(p.startswith(f"{chart_names[0]}: dataset_uuid") for p in problems)
    assert any("also used by" in p for p in problems)
    assert any(p.startswith(f"{dataset}: database_uuid") for p in problems)
    assert any(p.endswith("which is not in the bundle") for p in problems)  # the cell of the renamed chart
    (dashboard,) = of_kind(broken, "dashboards").values()
    cell = chart_cells(dashboard)[0]
    del dashboard["position"][cell["id"]]
    assert any(p.endswith("on no dashboard") for p in reference_problems(broken))


def test_every_uuid_reference_resolves_and_every_chart_is_on_the_dashboard():
    assert reference_problems(BUNDLE) == []


def layout_problems(dashboard: dict[str, Any]) -> list[str]:
    """ROOT_ID -> GRID_ID -> rows -> charts; every child exists and names its parents."""
    position = dashboard["position"]
    problems = []
    nodes = {key: node for key, node in position.items() if isinstance(node, dict)}
    for key, node in nodes.items():
        if node.get("id") != key:
            problems.append(f"{key}: id {node.get('id')!r}")
        for child in node.get("children", []):
            if child not in nodes:
                problems.append(f"{key}: child {child} does not exist")
            elif nodes[child].get("parents", [])[-1:] != [key]:
                problems.append(f"{child}: parents {nodes[child].get('parents')} do not end with {key}")
    if nodes.get("ROOT_ID", {}).get("children") != ["GRID_ID"]:
        problems.append("ROOT_ID must hold GRID_ID")
    reachable, todo = set(), ["ROOT_ID"]
    while todo:
        key = todo.pop()
        reachable.add(key)
        todo += nodes.get(key, {}).get("children", [])
    problems += [f"{key}: not reachable from ROOT_ID" for key, node in nodes.items()
                 if key not in reachable and node.get("type") != "HEADER"]
    for key, node in nodes.items():
        if node.get("type") == "ROW":
            width = sum(nodes[c]["meta"]["width"] for c in node["children"] if c in nodes)
            if width > 12:
                problems.append(f"{key}: {width} columns wide, the grid has 12")
    if position.get("DASHBOARD_VERSION_KEY") != "v2":
        problems.append("DASHBOARD_VERSION_KEY is not v2")
    return problems


def test_layout_checker_rejects_a_broken_tree():
    (dashboard,) = copy.deepcopy(DASHBOARDS).values()
    row = next(key for key, node in dashboard["position"].items() if isinstance(node, dict) and node.get("type") == "ROW")
    dashboard["position"][row]["children"].append("CHART-ghost")
    cell = chart_cells(dashboard)[0]
    cell["meta"]["width"] = 12
    assert any("CHART-ghost does not exist" in p for p in layout_problems(dashboard))
    assert any("columns wide" in p for p in layout_problems(dashboard))


def test_the_dashboard_layout_is_a_well_formed_grid():
    (dashboard,) = DASHBOARDS.values()
    assert layout_problems(dashboard) == []
    assert dashboard["published"] is True and dashboard["slug"] == "wotr-events"


# ---------------------------------------------------------------------------------------
# The database: the compose ClickHouse, with no secret in the files
# ---------------------------------------------------------------------------------------


def compose_superset_env() -> dict[str, str]:
    return {str(k): str(v) for k, v in yaml.safe_load(COMPOSE_FILE.read_text())["services"]["superset"]["environment"].items()}


def test_the_database_is_wotr_clickhouse_with_a_masked_password():
    (database,) = DATABASES.values()
    assert database["database_name"] == DATABASE_NAME
    assert f'-d "{DATABASE_NAME}"' in (SUPERSET_DIR / "bootstrap.sh").read_text()
    match = re.fullmatch(r"clickhousedb://([^:@/]+):([^@]*)@([^:/]+):(\d+)/(\w+)", database["sqlalchemy_uri"])
    assert match, database["sqlalchemy_uri"]
    user, password, host, port, db = match.groups()
    assert password == PASSWORD_MASK, "the bundle must not hold the password"
    env = compose_superset_env()
    assert (host, port, db) == (env["CLICKHOUSE_HOST"], env["CLICKHOUSE_PORT"], env["CLICKHOUSE_DB"])
    assert db == DATABASE
    assert "password" not in database


# ---------------------------------------------------------------------------------------
# The dataset and the SQL: only columns of wotr.ingested_data as the code creates it
# ---------------------------------------------------------------------------------------

(DATASET,) = DATASETS.values()
PHYSICAL = {c["column_name"]: c for c in DATASET["columns"] if not c.get("expression")}
CALCULATED = {c["column_name"]: c for c in DATASET["columns"] if c.get("expression")}
SAVED_METRICS = {m["metric_name"]: m for m in DATASET["metrics"]}

_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_IDENT = re.compile(r"`([^`]+)`|\b([A-Za-z_][A-Za-z0-9_]*)\b(\s*\()?")
_SQL_WORDS = {"and", "or", "not", "as", "case", "when", "then", "else", "end", "null", "is", "in", "between",
              "like", "distinct", "interval", "day", "hour", "minute", "second", "true", "false", "e"}


def column_refs(expression: str) -> set[str]:
    """Identifiers an SQL expression uses as columns: words not called as functions,
    outside string literals, other than SQL keywords (numbers such as 1e6 are skipped)."""
    refs = set()
    text = _STRING.sub("''", expression)
    for match in _IDENT.finditer(text):
        quoted, word, call = match.groups()
        if quoted:
            refs.add(quoted)
        elif not call and word.lower() not in _SQL_WORDS and not re.match(r"\d", text[match.start() - 1:match.start()] or " "):
            refs.add(word)
    return refs


def test_column_refs_finds_columns_and_ignores_functions_literals_and_keywords():
    assert column_refs("quantile(0.95)((toUnixTimestamp64Micro(loaded_at) - created_at) / 1e6)") == {"loaded_at", "created_at"}
    assert column_refs("countIf(type = 'x y' AND `source` IS NOT NULL)") == {"type", "source"}
    assert column_refs("uniqExact(idd)") == {"idd"}


def sql_problems(dataset: dict[str, Any], columns: dict[str, str]) -> list[str]:
    problems = []
    if dataset.get("sql"):
        problems.append("a virtual dataset: the dataset must be the table itself")
    physical = {c["column_name"]: c for c in dataset["columns"] if not c.get("expression")}
    if set(physical) != set(columns):
        problems.append(f"physical columns {sorted(physical)} are not the table's {sorted(columns)}")
    for name, column in physical.items():
        if name in columns and column.get("type") != columns[name]:
            problems.append(f"column {name}: type {column.get('type')!r}, the table has {columns[name]!r}")
        if name in columns and bool(column.get("is_dttm")) != columns[name].replace("Nullable(", "").startswith("DateTime"):
            problems.append(f"column {name}: is_dttm {column.get('is_dttm')} does not match {columns[name]}")
    if dataset.get("main_dttm_col") not in columns or not columns[dataset["main_dttm_col"]].startswith("DateTime"):
        problems.append(f"main_dttm_col {dataset.get('main_dttm_col')!r} is not a DateTime column of the table")
    expressions = [(f"column {c['column_name']}", c["expression"]) for c in dataset["columns"] if c.get("expression")]
    expressions += [(f"metric {m['metric_name']}", m["expression"]) for m in dataset["metrics"]]
    for where, expression in expressions:
        unknown = column_refs(expression) - set(columns)
        if unknown:
            problems.append(f"{where}: {expression!r} names {sorted(unknown)}, not columns of {TABLE}")
    return problems


def test_sql_checker_rejects_unknown_columns_and_types():
    broken = copy.deepcopy(DATASET)
    broken["metrics"][0]["expression"] = "uniqExact(event_id)"
    broken["columns"][0]["type"] = "UUID"
    broken["columns"].append({"column_name": "received_at", "type": "DateTime", "is_dttm": True})
    problems = sql_problems(broken, COLUMNS)
    assert any("names ['event_id']" in p for p in problems)
    assert any("type 'UUID'" in p for p in problems)
    assert any("are not the table's" in p for p in problems)


def test_the_dataset_is_the_table_the_code_creates_and_its_sql_names_only_its_columns():
    assert (DATASET["schema"], DATASET["table_name"]) == (DATABASE, TABLE)
    assert sql_problems(DATASET, COLUMNS) == []


def chart_problems(chart: dict[str, Any], dataset: dict[str, Any], columns: dict[str, str]) -> list[str]:
    """What a chart's params name must exist: columns, saved metrics, time grains."""
    params = chart["params"]
    names = {c["column_name"] for c in dataset["columns"]}
    metrics = {m["metric_name"] for m in dataset["metrics"]}
    where = chart["slice_name"]
    problems = []
    if params.get("viz_type") != chart["viz_type"]:
        problems.append(f"{where}: params.viz_type {params.get('viz_type')!r} is not {chart['viz_type']!r}")
    if not re.fullmatch(r"\d+__table", str(params.get("datasource"))):
        problems.append(f"{where}: datasource {params.get('datasource')!r}")
    used_metrics = list(params.get("metrics") or []) + [params[k] for k in ("metric", "series_limit_metric") if params.get(k)]
    for metric in used_metrics:
        if isinstance(metric, str):
            if metric not in metrics:
                problems.append(f"{where}: metric {metric!r} is no saved metric of the dataset")
        elif metric.get("expressionType") == "SQL":
            problems += [f"{where}: metric SQL names {c}" for c in column_refs(metric["sqlExpression"]) - set(columns)]
        else:
            problems.append(f"{where}: metric {metric!r} is neither a saved metric nor SQL")
    used_columns = [params[k] for k in ("x_axis", "granularity_sqla") if params.get(k)] + list(params.get("groupby") or [])
    used_columns += [f["subject"] for f in params.get("adhoc_filters") or [] if f.get("expressionType") == "SIMPLE"]
    problems += [f"{where}: column {c!r} is not in the dataset" for c in used_columns if c not in names]
    if params.get("x_axis") and params.get("x_axis") not in columns:
        problems.append(f"{where}: x_axis {params['x_axis']!r} is not a column of the table")
    if params.get("time_grain_sqla") and params["time_grain_sqla"] not in TIME_GRAINS:
        problems.append(f"{where}: time grain {params['time_grain_sqla']!r}")
    return problems


def test_chart_checker_rejects_unknown_metrics_columns_and_grains():
    chart = copy.deepcopy(CHARTS[next(n for n, c in CHARTS.items() if c["params"].get("groupby"))])
    chart["params"].update(metrics=["count"], groupby=["kind"], time_grain_sqla="PT7M")
    problems = chart_problems(chart, DATASET, COLUMNS)
    assert any("'count' is no saved metric" in p for p in problems)
    assert any("'kind' is not in the dataset" in p for p in problems)
    assert any("time grain 'PT7M'" in p for p in problems)


@pytest.mark.parametrize("name", sorted(CHARTS))
def test_each_chart_names_only_what_the_dataset_has(name):
    assert chart_problems(CHARTS[name], DATASET, COLUMNS) == []


def test_the_dashboard_shows_volume_breakdowns_and_ingest_lag():
    charts = {c["slice_name"]: c["params"] for c in CHARTS.values()}
    over_time = [p for p in charts.values() if p.get("x_axis") == "created_at"]
    assert {tuple(p.get("groupby") or ()) for p in over_time} >= {(), ("type",), ("source",)}
    lag = [p for p in charts.values() if any("lag" in m for m in p.get("metrics") or [] if isinstance(m, str))]
    assert lag, "no chart of the ingest lag"
    assert all("loaded_at" in SAVED_METRICS[m]["expression"] and "created_at" in SAVED_METRICS[m]["expression"]
               for p in lag for m in p["metrics"])


# ---------------------------------------------------------------------------------------
# Every expression and each chart's query run in ClickHouse on the adapter's own table
# ---------------------------------------------------------------------------------------


def chart_query(params: dict[str, Any], dataset: dict[str, Any]) -> str:
    """The query Superset builds for a chart, in its shape: time bucket by the engine spec's
    grain, group-by columns, saved metrics' SQL, the time filter on the x axis."""
    metrics = {m["metric_name"]: m["expression"] for m in dataset["metrics"]}
    names = list(params.get("metrics") or []) + ([params["metric"]] if params.get("metric") else [])
    select, group = [], []
    if params.get("x_axis"):
        bucket = TIME_GRAINS[params["time_grain_sqla"]].format(col=f"`{params['x_axis']}`")
        select.append(f"{bucket} AS bucket")
        group.append(bucket)
    for column in params.get("groupby") or []:
        select.append(f"`{column}`")
        group.append(f"`{column}`")
    select += [f"{metrics[name]} AS `{name}`" for name in names]
    time_column = params.get("x_axis") or dataset["main_dttm_col"]
    sql = (f"SELECT {', '.join(select)} FROM `{dataset['schema']}`.`{dataset['table_name']}` "
           f"WHERE `{time_column}` >= now() - INTERVAL 1 DAY")
    return sql + (f" GROUP BY {', '.join(group)}" if group else "")


RUNNER = textwrap.dedent("""
    import json, sys
    import clickhouse_connect
    from wotr_adapters.clickhouse import ClickHouseAnalyticsSink

    directory, queries = sys.argv[1], json.loads(sys.stdin.read())
    client = clickhouse_connect.get_client(dsn="chdb://" + directory)
    ClickHouseAnalyticsSink(client, "wotr").start()   # the table exactly as wotr creates it
    client.command(
        "INSERT INTO wotr.ingested_data (id, created_at, event_time, source, type, payload, object_key) "
        "SELECT toString(number), now64(6) - toIntervalSecond(number * 7), NULL, "
        "['web', 'segment'][number % 2 + 1], ['click', 'view', 'identify'][number % 3 + 1], '{}', 'raw/x' "
        "FROM numbers(200)")
    out = {}
    for name, sql in queries.items():
        try:
            out[name] = {"rows": len(client.query(sql).result_rows)}
        except Exception as exc:
            out[name] = {"error": str(exc).splitlines()[0][:300]}
    print(json.dumps(out))
""")


def run_in_clickhouse(queries: dict[str, str], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Runs in a process of its own: the in-process engine allows one session per process."""
    done = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "ch")], input=json.dumps(queries),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def clickhouse_answers(tmp_path_factory) -> dict[str, dict[str, Any]]:
    if importlib.util.find_spec("chdb") is None:
        pytest.skip("the in-process ClickHouse engine (wotr[embedded]) is not installed")
    table = f"`{DATASET['schema']}`.`{DATASET['table_name']}`"
    queries = {f"column {name}": f"SELECT {c['expression']} FROM {table}" for name, c in CALCULATED.items()}
    queries |= {f"metric {name}": f"SELECT {m['expression']} FROM {table}" for name, m in SAVED_METRICS.items()}
    queries |= {f"chart {c['slice_name']}": chart_query(c["params"], DATASET) for c in CHARTS.values()}
    queries["a column that does not exist fails"] = f"SELECT uniqExact(event_id) FROM {table}"
    return run_in_clickhouse(queries, tmp_path_factory.mktemp("superset-sql"))


def test_every_expression_and_chart_query_runs_in_clickhouse(clickhouse_answers):
    assert "error" in clickhouse_answers.pop("a column that does not exist fails"), "the runner cannot fail"
    failed = {name: answer["error"] for name, answer in clickhouse_answers.items() if "error" in answer}
    assert failed == {}
    assert all(answer["rows"] > 0 for answer in clickhouse_answers.values()), clickhouse_answers


# ---------------------------------------------------------------------------------------
# The import at start-up: bootstrap.sh, import_assets.py, the image
# ---------------------------------------------------------------------------------------


def import_assets_module():
    spec = importlib.util.spec_from_file_location("wotr_superset_import_assets", SUPERSET_DIR / "import_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_assets_reads_the_bundle_and_points_it_at_the_compose_clickhouse():
    module = import_assets_module()
    contents = module.read_bundle(ASSETS)
    assert set(contents) == set(BUNDLE)
    env = {"CLICKHOUSE_USER": "ana lytics", "CLICKHOUSE_PASSWORD": "not-in-the-files", "CLICKHOUSE_HOST": "clickhouse",
           "CLICKHOUSE_PORT": "8123", "CLICKHOUSE_DB": "wotr"}
    connected = module.with_connection(contents, env)
    (name,) = DATABASES
    database = yaml.safe_load(connected[name])
    assert database["sqlalchemy_uri"] == f"clickhousedb://ana%20lytics:{PASSWORD_MASK}@clickhouse:8123/wotr"
    assert "not-in-the-files" not in "".join(connected.values())
    assert {k: v for k, v in database.items() if k != "sqlalchemy_uri"} == {
        k: v for k, v in BUNDLE[name].items() if k != "sqlalchemy_uri"}
    assert all(connected[k] == contents[k] for k in contents if k != name)


def test_import_assets_reads_only_variables_compose_gives_superset():
    source = (SUPERSET_DIR / "import_assets.py").read_text()
    needed = set(re.findall(r'env(?:iron)?\["([A-Z][A-Z0-9_]+)"\]', source))
    assert {"CLICKHOUSE_PASSWORD", "SUPERSET_ADMIN_USER", "CLICKHOUSE_HOST"} <= needed
    assert needed - set(compose_superset_env()) == set()
    assert "ImportAssetsCommand" in source and "passwords=" in source


def test_bootstrap_imports_the_assets_the_image_contains():
    bootstrap = (SUPERSET_DIR / "bootstrap.sh").read_text()
    dockerfile = (SUPERSET_DIR / "Dockerfile").read_text()
    call = re.search(r'^"\$\(dirname "\$\(command -v superset\)"\)/python" (\S+) (\S+)$', bootstrap, re.M)
    assert call, "bootstrap.sh does not run import_assets.py"
    script, bundle = call.groups()
    assert re.search(rf"^COPY .*\bimport_assets\.py .*{Path(script).parent}/?$", dockerfile, re.M)
    assert re.search(rf"^COPY assets {bundle}/?$", dockerfile, re.M)
    assert bootstrap.index("set-database-uri") < bootstrap.index("import_assets.py") < bootstrap.index("run-server")
