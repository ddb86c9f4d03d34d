"""The scrubber on a real SQLite registry and the memory stores: delayed deletes wait
for scrub_time, failures back off, data in use stays, claims keep two scrubbers and a
restore apart, and a restore refuses what cannot be active again."""

from __future__ import annotations

import datetime
import logging
import uuid

import pytest

from abbild.errors import BackendUnavailable, Conflict, ImageNotFound, InUse
from abbild.image import Image, Status, utcnow
from abbild.registry import Viewer
from abbild.scrubber import Scrubber

ADMIN = Viewer(is_admin=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def active_image(service, data=b"image data", store="mem"):
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)
    return service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN, store_name=store)


def objects(service, store="mem"):
    return service.stores[store].driver._objects


def stored(service, image_id):
    return service.registry.get_image(image_id, include_deleted=True)


def scrubber(service, scrub_time=0, batch_size=100, interval=60, clock=None):
    service.conf.set_override("scrub_time", scrub_time)
    service.conf.set_override("scrub_batch_size", batch_size)
    service.conf.set_override("scrub_interval", interval)
    return Scrubber(service, clock=clock or Clock())


def fail_deletes(service, store="mem", error=lambda uri: BackendUnavailable("mem", "timed out")):
    """Make the store's deletes fail until the returned function is called; counts calls."""
    driver = service.stores[store].driver
    real, calls = driver.delete, []

    def delete(uri):
        calls.append(uri)
        raise error(uri)

    driver.delete = delete

    def heal():
        def counted(uri):
            calls.append(uri)
            real(uri)

        driver.delete = counted

    return calls, heal


@pytest.fixture
def delayed(service):
    service.conf.set_override("delayed_delete", True)
    return service


def test_a_delayed_delete_hides_the_image_and_keeps_its_data(delayed):
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    with pytest.raises(ImageNotFound):
        delayed.get(image.id, ADMIN)
    assert image.id not in [i.id for i in delayed.list(_filters(), [], 10, None, ADMIN)]
    waiting = stored(delayed, image.id)
    assert waiting.status is Status.PENDING_DELETE and waiting.upload_worker is None
    assert waiting.deleted_at is not None and len(waiting.locations) == 1
    assert objects(delayed) == {image.id: b"image data"}
    assert delayed.recorder.events[-1] == ("deleted", "pending_delete")  # once, when asked for (Glance's image.delete)


def _filters():
    from abbild.registry import ImageFilters

    return ImageFilters()


def test_scrub_waits_for_scrub_time_then_deletes(delayed):
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    assert scrubber(delayed, scrub_time=3600).run()["waiting"] == 1
    assert objects(delayed) == {image.id: b"image data"}
    delayed.recover()  # an API start leaves delayed deletes to the scrubber
    assert objects(delayed) == {image.id: b"image data"}
    counts = scrubber(delayed, scrub_time=0).run()
    assert counts["deleted"] == 1 and objects(delayed) == {}
    assert stored(delayed, image.id).status is Status.DELETED
    assert [e for e in delayed.recorder.events if e[0] == "deleted"] == [("deleted", "pending_delete")]  # not again


def test_an_outage_is_retried_with_backoff_and_scrubbed_after_it(delayed):
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    clock = Clock()
    scrub = scrubber(delayed, interval=60, clock=clock)
    calls, heal = fail_deletes(delayed)
    assert scrub.run()["failed"] == 1 and len(calls) == 1
    left = stored(delayed, image.id)
    assert left.status is Status.PENDING_DELETE and left.upload_worker is None and len(left.locations) == 1
    assert left.deleted_at is None  # its deletion has begun: due at once, never restored
    waits = []
    for _ in range(8):  # 60, 120, 240, ... capped at an hour
        assert scrub.run()["backing_off"] == 1
        start = clock.now
        while scrub.run()["backing_off"] == 1:
            clock.now += 30
        waits.append(clock.now - start)
    assert waits[:4] == [60, 120, 240, 480] and waits[-1] == 3600 and len(calls) == 9
    heal()
    clock.now += 3600
    assert scrub.run()["deleted"] == 1 and objects(delayed) == {}
    assert scrub._retries == {}


def test_a_new_scrubber_retries_at_once(delayed):
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    _, heal = fail_deletes(delayed)
    assert scrubber(delayed).run()["failed"] == 1
    heal()
    assert scrubber(delayed).run()["deleted"] == 1
    assert stored(delayed, image.id).status is Status.DELETED


def test_data_in_use_stays_with_a_warning(delayed, caplog):
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    fail_deletes(delayed, error=lambda uri: InUse(uri, "a clone uses it"))
    with caplog.at_level(logging.WARNING, "abbild.scrubber"):
        assert scrubber(delayed).run()["in_use"] == 1
    assert "a clone uses it" in caplog.text
    left = stored(delayed, image.id)
    assert left.status is Status.PENDING_DELETE and left.upload_worker is None and len(left.locations) == 1


def test_a_store_failure_of_an_immediate_delete_goes_to_the_scrubber(service):
    image = active_image(service)
    _, heal = fail_deletes(service)
    service.deletes.delete(image.id, ADMIN)  # accepted: the data goes later
    with pytest.raises(ImageNotFound):
        service.get(image.id, ADMIN)
    left = stored(service, image.id)
    assert left.status is Status.PENDING_DELETE and left.upload_worker is None and left.deleted_at is None
    heal()
    assert scrubber(service, scrub_time=43200).run()["deleted"] == 1  # due at once, whatever scrub_time
    assert objects(service) == {}


def test_only_part_of_the_data_went(service):
    image = active_image(service)
    image = _with_second_location(service, image)
    fail_deletes(service, store="other")
    service.deletes.delete(image.id, ADMIN)
    left = stored(service, image.id)
    assert [loc.store for loc in left.locations] == ["other"] and objects(service) == {}
    with pytest.raises(Conflict, match="deletion of its data has begun"):
        scrubber(service).restore(image.id)


def _with_second_location(service, image):
    """The image's data in store ``other`` too, as a multi-store import leaves it."""
    from abbild.image import Location

    stored_object = service.stores["other"].driver.put(image.id, [b"image data"], 10)

    def add(current):
        current.locations.append(Location("other", stored_object.uri, 10))

    return service.registry.update_image(image.id, add)


# -- restore ---------------------------------------------------------------------------------


def test_restore_brings_back_every_location(delayed):
    image = _with_second_location(delayed, active_image(delayed))
    delayed.deletes.delete(image.id, ADMIN)
    restored = scrubber(delayed).restore(image.id)
    assert restored.status is Status.ACTIVE and restored.deleted_at is None
    assert restored.locations == image.locations
    assert delayed.get(image.id, ADMIN).status is Status.ACTIVE
    assert b"".join(delayed.download(image.id, ADMIN, lambda size: None).chunks) == b"image data"
    assert scrubber(delayed).run()["deleted"] == 0 and objects(delayed) == {image.id: b"image data"}


def test_restore_refuses_what_it_cannot_bring_back(delayed):
    scrub = scrubber(delayed)
    live = active_image(delayed)
    with pytest.raises(Conflict, match="'active', not 'pending_delete'"):
        scrub.restore(live.id)
    with pytest.raises(ImageNotFound):
        scrub.restore(str(uuid.uuid4()))
    gone = active_image(delayed)
    delayed.deletes.delete(gone.id, ADMIN)
    scrub.run()
    with pytest.raises(Conflict, match="deleted and its data is gone"):
        scrub.restore(gone.id)
    held = active_image(delayed)
    delayed.deletes.delete(held.id, ADMIN)

    def claimed_by_a_scrubber_elsewhere(image):
        image.upload_worker = "scrubber-host:1:1"
        image.upload_lease = utcnow() + datetime.timedelta(minutes=5)
        image.deleted_at = None

    delayed.registry.update_image(held.id, claimed_by_a_scrubber_elsewhere)
    with pytest.raises(Conflict, match="scrubber-host:1:1 is deleting its data right now"):
        scrub.restore(held.id)
    assert scrub.run()["held"] == 1  # nor does another scrubber touch it
    assert objects(delayed)[held.id] == b"image data"


def test_a_restore_between_listing_and_claim_wins(delayed):
    """The scrubber listed the image, then a restore came first: the claim's
    compare-and-swap sees it active and leaves its data alone."""
    image = active_image(delayed)
    delayed.deletes.delete(image.id, ADMIN)
    scrub = scrubber(delayed)
    real = delayed.registry.images_in_status

    def listed_then_restored(status):
        found = real(status)
        scrubber(delayed).restore(image.id)
        return found

    delayed.registry.images_in_status = listed_then_restored
    assert scrub.run()["held"] == 1
    assert delayed.get(image.id, ADMIN).status is Status.ACTIVE and objects(delayed) == {image.id: b"image data"}


# -- several scrubbers -----------------------------------------------------------------------


def test_two_scrubbers_share_a_backlog_and_delete_each_image_once(delayed):
    images = [active_image(delayed, f"data {n}".encode()) for n in range(7)]
    for image in images:
        delayed.deletes.delete(image.id, ADMIN)
    calls, heal = fail_deletes(delayed)
    heal()  # counting only
    other = type(delayed)(delayed.conf, delayed.registry, delayed.stores, delayed.plugins)
    other.claims.worker = "another-host:2:2"  # its own claims, as another host's
    first, second = scrubber(delayed, batch_size=3), scrubber(other, batch_size=3)
    real = delayed.registry.images_in_status
    interleaved = []

    def listing(status):
        found = real(status)
        if not interleaved:  # the second scrubber runs right after the first listed
            interleaved.append(None)
            interleaved[0] = second.run()
        return found

    delayed.registry.images_in_status = listing
    counts = first.run()
    assert interleaved[0]["deleted"] == 7  # it ran to the end before the first claimed any
    assert counts["deleted"] == 0 and counts["held"] == 7
    assert sorted(calls) == sorted(loc.uri for image in images for loc in image.locations)
    assert objects(delayed) == {}


def test_a_stop_gives_the_batch_back(delayed):
    import threading

    images = [active_image(delayed, f"data {n}".encode()) for n in range(4)]
    for image in images:
        delayed.deletes.delete(image.id, ADMIN)
    stopping = threading.Event()
    driver = delayed.stores["mem"].driver
    real = driver.delete

    def delete_then_stop(uri):
        real(uri)
        stopping.set()

    driver.delete = delete_then_stop
    counts = scrubber(delayed, batch_size=4).run(stopping)
    assert counts["deleted"] == 1
    left = [stored(delayed, image.id) for image in images]
    assert sorted(i.status.value for i in left) == ["deleted", "pending_delete", "pending_delete", "pending_delete"]
    assert all(i.upload_worker is None for i in left)  # given back: the next pass takes them at once
