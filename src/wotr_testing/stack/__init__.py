"""The native local stack: Kafka, an S3 server, PostgreSQL, Prometheus and Alertmanager without Docker.

`wotr stack up` (also `wotr-stack up` or `python -m wotr_testing.stack up`) installs what
is missing, starts each service on 127.0.0.1 and writes the endpoints to
`<stack home>/run/env`. Development tooling: the runtime packages never import it.
"""

from .process import StackError
from .stack import SERVICE_NAMES, ServiceStatus, Stack

__all__ = ["SERVICE_NAMES", "ServiceStatus", "Stack", "StackError"]
