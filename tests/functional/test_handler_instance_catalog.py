"""services/instance_catalog: the sample schedule tick reads the fleet's instance types from EC2 and the Pricing API
(the local moto server's) into the catalog table; the same tick twice changes nothing, a late tick never replaces a
newer catalog, and an event that is not a tick is refused, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from ringfleet_local.catalog import LOCAL_ON_DEMAND_PRICES

from ringfleet import bootstrap
from ringfleet.scaling.catalog import InstanceCatalog
from tests.functional.handlers import Handler, handler_of, sample

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

TICK = datetime(2025, 6, 2, 14, 31, tzinfo=UTC)  # scheduled_event.json's time


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("instance_catalog", broker_url) as loaded:
        yield loaded


@pytest.fixture
def refresh(handler: Handler) -> Handler:
    handler.reset()
    return handler


def stored(handler: Handler) -> InstanceCatalog:
    (item,) = handler.tables()["CatalogTable"]
    return InstanceCatalog.from_json(item["catalog"]["S"])


def test_the_tick_stores_each_instance_type_s_gpus_and_on_demand_price(refresh: Handler) -> None:
    # when the sample tick fires (and is delivered twice)
    result = refresh(sample("scheduled_event.json"))
    after = refresh.tables()
    assert refresh(sample("scheduled_event.json")) == result
    assert refresh.tables() == after, "the second delivery changed the tables"
    # then every type of the stack's WorkerInstanceTypes is in the catalog: GPUs as EC2 describes them (moto's data,
    # p3 the local cloud's fill), prices as the Pricing API gives them (the local cloud's stand-in)
    catalog = stored(refresh)
    assert catalog.refreshed_at == TICK and result["refreshed_at"] == TICK.isoformat()
    expected = {"g4dn.xlarge": 1, "g5.xlarge": 1, "g6.xlarge": 1, "p3.2xlarge": 1, "g5.12xlarge": 4, "p4d.24xlarge": 8}
    assert {name: catalog.gpus(name) for name in catalog.names()} == expected
    assert {name: catalog.on_demand(name) for name in catalog.names()} == {
        name: LOCAL_ON_DEMAND_PRICES[name] for name in expected
    }
    assert catalog.types["p4d.24xlarge"].gpu_memory_mib == 40960 and not catalog.left_out
    assert result["types"]["g5.12xlarge"] == {"gpus": 4, "on_demand_per_hour": 5.672}


def test_a_late_tick_never_replaces_a_newer_catalog(refresh: Handler) -> None:
    # given a catalog refreshed an hour after the sample tick
    newer = datetime(2025, 6, 2, 15, 31, tzinfo=UTC)
    bootstrap.catalog_service().refresh(newer)
    # when the sample tick arrives late
    result = refresh(sample("scheduled_event.json"))
    # then the newer catalog stays, and is what the handler reports
    assert stored(refresh).refreshed_at == newer and result["refreshed_at"] == newer.isoformat()


def test_readers_refresh_a_catalog_never_stored_and_then_read_the_stored_one(refresh: Handler) -> None:
    # given no catalog stored yet (a stack deployed minutes ago)
    assert refresh.tables()["CatalogTable"] == []
    # when intake or the scaler reads it, it is read from AWS and stored
    catalog = bootstrap.catalog_service().current()
    assert catalog.gpus("g5.12xlarge") == 4 and stored(refresh) == catalog
    # and a later read is the stored one
    assert bootstrap.catalog_service().current() == catalog


def test_an_event_that_is_not_a_tick_is_refused_naming_it(refresh: Handler) -> None:
    with pytest.raises(ValueError, match="EC2 Spot Instance Interruption Warning"):
        refresh(sample("ec2_spot_interruption_warning.json"))
    assert refresh.tables()["CatalogTable"] == []
