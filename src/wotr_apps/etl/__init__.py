"""The PySpark ETL: raw JSON archive (`raw/dt=.../<id>.json`) to curated Parquet.

Modules: `layout` (where and which dates), `schema` (derived from the domain's
`Event`), `transform` (DataFrame logic), `job` (one run), `migrate` (the curated output
already written, brought to the current schema), `session` and `jars` (Spark and its
s3a jars), `cli` (`wotr etl`) and `bench`. The run records are `wotr_apps.run_history`,
read by the API too. The container (`wotr_apps.container`) wires all of it; importing
the package does not import pyspark.
"""

__all__: list[str] = []
