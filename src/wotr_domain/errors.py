"""The one error hierarchy that crosses every port.

Adapters translate their drivers' exceptions into these (`raise ... from e`), so the
services and the API never see a library exception.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "Conflict",
    "InvalidEvent",
    "InvalidId",
    "MalformedJson",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "Refused",
    "Unavailable",
    "WotrError",
]


class WotrError(Exception):
    """Root of every error wotr raises on purpose."""

    code = "error"


class InvalidEvent(WotrError):
    """The client sent something that is not an acceptable event.

    `field` names the offending field (dotted path) when one can be named.
    """

    code = "invalid_event"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidId(InvalidEvent):
    """The client-supplied event id is not acceptable."""

    code = "invalid_id"


class MalformedJson(InvalidEvent):
    """The body is not JSON at all, as opposed to JSON of the wrong shape."""

    code = "malformed_json"


class PayloadTooLarge(WotrError):
    """A request or event exceeds the configured size limit."""

    code = "payload_too_large"

    def __init__(self, size: int, limit: int, unit: str = "bytes") -> None:
        super().__init__(f"{size} {unit} exceed the limit of {limit} {unit}")
        self.size = size
        self.limit = limit


class NotFound(WotrError):
    """The object, event or row asked for does not exist."""

    code = "not_found"


class Conflict(WotrError):
    """The request clashes with what is already stored (e.g. an id reused for other content)."""

    code = "conflict"


class Unavailable(WotrError):
    """A dependency could not be reached or refused the operation; retrying later may work."""

    code = "unavailable"

    def __init__(self, dependency: str, detail: str = "", *, uncertain: bool = False) -> None:
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))
        self.dependency = dependency
        self.detail = detail
        # True when the failure came while committing: the write may have been applied.
        self.uncertain = uncertain


class Overloaded(Unavailable):
    """Load is shed: the work already waiting or in flight is at its bound, so this request
    is refused at once instead of queueing. Nothing of it was written; retry after
    `retry_after` seconds."""

    code = "overloaded"

    def __init__(self, dependency: str, detail: str = "", *, retry_after: float = 1.0) -> None:
        super().__init__(dependency, detail)
        self.retry_after = retry_after


class Refused(WotrError):
    """A dependency answered but permanently refused this data; retrying cannot help.

    The opposite of `Unavailable`: the dependency is up, the data is what it will never
    accept (a value outside its type, a constraint it enforces). Callers isolate the
    offending items instead of retrying them.
    """

    code = "refused"

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} refused the data" + (f": {detail}" if detail else ""))
        self.dependency = dependency
        self.detail = detail


class ConfigError(WotrError):
    """Configuration is missing or invalid; names the variable so the operator can fix it."""

    code = "config_error"

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable
        self.problem = problem
