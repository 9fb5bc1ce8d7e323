"""The dependency rule: apps -> adapters -> domain, and a domain free of drivers.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_the_domain_imports_without_any_driver():
    code = (
        "import sys, wotr_domain, wotr_domain.services, wotr_domain.codec, wotr_domain.ids;"
        "bad = {m for m in sys.modules for d in ('litestar','dependency_injector','clickhouse_connect','chdb','minio',"
        "'confluent_kafka','psycopg','pyspark','opentelemetry','sqlite3') if m == d or m.startswith(d + '.')};"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
