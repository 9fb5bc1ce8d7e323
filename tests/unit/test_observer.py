"""The services' observer hooks: the no-op default spells every hook out."""

from __future__ import annotations

import pytest


def test_the_null_observer_implements_exactly_the_hooks_of_every_observer_protocol():
    from wotr_domain.services.observer import IngestObserver, LoaderObserver, NullObserver, RelayObserver

    hooks = {name for proto in (IngestObserver, LoaderObserver, RelayObserver)
             for name in vars(proto) if not name.startswith("_")}
    assert hooks == {name for name in vars(NullObserver) if not name.startswith("_")}
    with pytest.raises(AttributeError):
        NullObserver().no_such_hook  # noqa: B018
