"""What projects embedding wotr use in their own test suites (the `wotr[testing]` extra).

- `wotr_testing.pytest_plugin`: pytest fixtures handing tests the real services (Kafka,
  S3, PostgreSQL, ClickHouse, Prometheus), registered as the `wotr` pytest11 plugin;
  each service comes from the environment, testcontainers, or the native stack.
- `wotr_testing.stack`: the native local stack, installed and supervised without Docker
  (`wotr stack ...`, `wotr-stack ...`, `python -m wotr_testing.stack ...`).

It depends on the runtime packages (`wotr_apps`, `wotr_adapters`, `wotr_domain`) and
none of them imports it (an import-linter contract in pyproject.toml). Importing it
starts nothing.
"""
