"""wotr's pure core: models, ports, services and errors. Standard library and msgspec only."""

from . import errors, models, ports, services
from .errors import ConfigError, Conflict, InvalidEvent, MalformedJson, NotFound, PayloadTooLarge, Unavailable, WotrError
from .models import AnalyticsRow, BusMessage, Delivery, Event, EventMetadata, EventStatus, IngestRequest, Receipt
from .ports import AnalyticsSink, EventBus, MetadataRepo, ObjectStore, Subscription

__all__ = [
    "AnalyticsRow", "AnalyticsSink", "BusMessage", "ConfigError", "Conflict", "Delivery", "Event",
    "EventBus", "EventMetadata", "EventStatus", "IngestRequest", "InvalidEvent", "MalformedJson",
    "MetadataRepo", "NotFound", "ObjectStore", "PayloadTooLarge", "Receipt", "Subscription",
    "Unavailable", "WotrError", "errors", "models", "ports", "services",
]
