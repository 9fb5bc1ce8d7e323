"""`make chaos` / `python -m chaos`: the fault matrix under load.

An open-loop load of single and batch events (client ids, SDK-style retries with the
same id) runs through `wotr serve --api-only`, two `wotr consume` processes (one group,
three partitions) and `wotr relay` on the local profile, against a native service stack
of its own (its own `WOTR_STACK_HOME` and `WOTR_STACK_PORT_OFFSET`: the default stack
that other test runs use is never touched). Faults are injected one scenario at a time,
then two at once; after each scenario and its recovery every event id the client was
ever told was accepted is reconciled across PostgreSQL, the S3 archive (checksums), the
consumers' ClickHouse engines and the Parquet of `wotr etl`.

`--quick` is the short form that `make test` runs; the full matrix writes
docs/reliability.md. The exit status is non-zero when an accepted event was lost or
duplicated after dedupe in any scenario.
"""
