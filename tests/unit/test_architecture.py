"""The dependency rule: testing -> apps -> adapters -> domain, and a domain free of drivers.

The contracts live in pyproject.toml ([tool.importlinter]); this test runs them, and
checks the shape they encode: `wotr_testing` (pytest plugin, native stack) sits above the
runtime and no runtime module imports it; `wotr stack` reaches it through an entry point;
only `wotr_apps.settings` reads the environment.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from wotr_apps import cli
from wotr_apps.settings import VARIABLES

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
RUNTIME = ("wotr", "wotr_apps", "wotr_adapters", "wotr_domain")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _modules(*packages: str) -> dict[str, ast.Module]:
    return {
        str(path.relative_to(SRC)): ast.parse(path.read_text(encoding="utf-8"))
        for package in packages
        for path in sorted((SRC / package).rglob("*.py"))
    }


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_import_contracts_hold():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_the_layers_put_the_testing_package_above_the_runtime():
    linter = PYPROJECT["tool"]["importlinter"]
    assert set(linter["root_packages"]) == {"wotr_testing", *RUNTIME}
    layers = [c["layers"] for c in linter["contracts"] if c["type"] == "layers"]
    assert layers == [["wotr_testing", "wotr", "wotr_apps", "wotr_adapters", "wotr_domain"]]
    assert [c["source_modules"] for c in linter["contracts"] if c["type"] == "forbidden"] == [["wotr_domain"]]


def test_no_runtime_module_imports_the_testing_package():
    offenders = {
        module: sorted(name for name in _imported(tree) if name.split(".")[0] == "wotr_testing")
        for module, tree in _modules(*RUNTIME).items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_runtime_loads_without_the_testing_package():
    code = (
        "import sys, wotr_apps.cli, wotr_apps.container, wotr_apps.settings, wotr_apps.etl.jars;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'wotr_testing');"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_settings_read_the_environment():
    """No adapter or domain module reads the environment or knows a variable's name."""
    names = {v.name for v in VARIABLES}
    found = []
    for module, tree in _modules("wotr_adapters", "wotr_domain").items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "from_env", "environb"}:
                found.append((module, node.attr))
            elif isinstance(node, ast.Name) and node.id in {"environ", "getenv"}:
                found.append((module, node.id))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [(module, name) for name in names if name in node.value]
    assert found == []


def test_the_testing_package_is_the_pytest_plugin_and_the_stack_command():
    entry_points = PYPROJECT["project"]["entry-points"]
    assert entry_points["pytest11"] == {"wotr": "wotr_testing.pytest_plugin"}
    assert entry_points[cli.COMMANDS_GROUP] == {"stack": "wotr_testing.stack.cli:main"}
    assert PYPROJECT["project"]["scripts"]["wotr-stack"] == "wotr_testing.stack.cli:console"
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(dep.startswith("wotr[") and "testing" in dep for dep in extras["test"])


def test_the_testing_package_imports_without_any_server(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:1",
           "WOTR_STACK_HOME": str(tmp_path / "stack")}
    code = "import wotr_testing, wotr_testing.pytest_plugin, wotr_testing.stack; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr
    assert not (tmp_path / "stack").exists()  # importing started nothing, wrote nothing


def test_wotr_stack_is_the_registered_subcommand(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["stack", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: wotr stack")


def test_without_the_testing_package_wotr_stack_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_registered_commands", lambda: {})
    assert cli.main(["stack", "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'wotr[testing]'" in err


def test_the_domain_imports_without_any_driver():
    code = (
        "import sys, wotr_domain, wotr_domain.services, wotr_domain.codec, wotr_domain.ids;"
        "bad = {m for m in sys.modules for d in ('litestar','dependency_injector','clickhouse_connect','chdb','minio',"
        "'confluent_kafka','psycopg','pyspark','opentelemetry','sqlite3') if m == d or m.startswith(d + '.')};"
        "print(sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
