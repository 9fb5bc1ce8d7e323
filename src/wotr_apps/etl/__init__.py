"""The PySpark ETL: raw JSON archive (`raw/dt=.../<id>.json`) to curated Parquet.

Modules: `layout` (where and which dates), `schema`, `transform` (DataFrame logic),
`job` (one run), `history` (run records), `session` and `jars` (Spark and its s3a
jars), `cli` (`wotr etl`) and `bench`. Importing the package does not import pyspark.
"""

__all__: list[str] = []
