"""Adapters of wotr's ports: in-memory, embedded (filesystem, SQLite, in-process ClickHouse)
and real (MinIO/S3, Kafka, PostgreSQL, ClickHouse). Drivers are imported only by the
module that needs them, so importing one adapter never pulls another's driver."""
