"""Who holds an image's data while it is written or deleted: delete takes the image out
of sight before its data goes, leases are kept on time, background jobs are bounded."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from abbild.errors import BackendUnavailable, Busy, Forbidden, ImageNotFound, InUse, RegistryUnavailable, TooManyJobs
from abbild.image import Image, Status
from abbild.jobs import Jobs
from abbild.registry import Viewer
from abbild.scrubber import Scrubber
from abbild.uploads import Claims

ADMIN = Viewer(is_admin=True)


def active_image(service, data=b"image data", **kw):
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", **kw), ADMIN)
    return service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)


def objects(service, store="mem"):
    return service.stores[store].driver._objects


# -- delete: the image leaves first, its data after ------------------------------------------


def test_protected_set_while_a_delete_runs_keeps_image_and_data(service):
    """Another request sets protected=true after the delete checked it: the delete must
    neither remove the data nor leave an active, protected image without it."""
    image = active_image(service)
    real_update = service.registry.update_image
    raced = []

    def update_image(image_id, change, **kw):
        if not raced:
            raced.append(real_update(image_id, lambda img: setattr(img, "protected", True)))
        return real_update(image_id, change, **kw)

    service.registry.update_image = update_image
    with pytest.raises(Forbidden, match="protected"):
        service.deletes.delete(image.id, ADMIN)
    after = service.registry.get_image(image.id)
    assert after.status is Status.ACTIVE and after.protected
    assert objects(service) == {image.id: b"image data"}


def test_registry_failure_after_the_data_went_leaves_no_active_image(service):
    # The delete's claim, left behind, runs out soon: within 2-3 s, as the registry keeps
    # whole seconds (a 1 s lease could run out at once and the scrubber not see it held).
    service.claims.lease_seconds = 3
    image = active_image(service)
    real_update = service.registry.update_image
    calls = []

    def update_image(image_id, change, **kw):
        calls.append(image_id)
        if len(calls) == 2:  # the write after the data was deleted
            raise RegistryUnavailable("connection lost")
        return real_update(image_id, change, **kw)

    service.registry.update_image = update_image
    with pytest.raises(RegistryUnavailable):
        service.deletes.delete(image.id, ADMIN)
    service.registry.update_image = real_update
    assert objects(service) == {}
    assert service.registry.get_image(image.id).status is Status.PENDING_DELETE
    with pytest.raises(ImageNotFound):  # gone for every caller, admins included
        service.get(image.id, ADMIN)
    scrubber = Scrubber(service)
    assert scrubber.run()["held"] == 1  # its claim holds for a moment, if its process lives on
    time.sleep(3.1)
    assert scrubber.run()["deleted"] == 1
    assert _status(service, image.id) is Status.DELETED


def test_store_failure_keeps_the_data_listed_for_the_scrubber(service):
    image = active_image(service)
    driver = service.stores["mem"].driver
    real_delete = driver.delete
    failures = [BackendUnavailable("mem", "timed out")]

    def delete(uri):
        if failures:
            raise failures.pop()
        real_delete(uri)

    driver.delete = delete
    service.deletes.delete(image.id, ADMIN)  # accepted: the data goes later
    with pytest.raises(ImageNotFound):
        service.get(image.id, ADMIN)
    pending = service.registry.get_image(image.id)
    assert pending.status is Status.PENDING_DELETE and [loc.store for loc in pending.locations] == ["mem"]
    assert Scrubber(service).run()["deleted"] == 1
    assert _status(service, image.id) is Status.DELETED
    assert objects(service) == {}


def test_data_in_use_brings_the_image_back(service):
    image = active_image(service)
    service.set_active(image.id, False, ADMIN)

    def delete(uri):
        raise InUse(uri, "a clone uses it")

    service.stores["mem"].driver.delete = delete
    with pytest.raises(InUse):
        service.deletes.delete(image.id, ADMIN)
    after = service.registry.get_image(image.id)
    assert after.status is Status.DEACTIVATED and after.upload_worker is None and len(after.locations) == 1


def test_recovery_finishes_a_delete_whose_process_died(service):
    gone_already, still_there = active_image(service, b"a"), active_image(service, b"b")
    del objects(service)[gone_already.id]  # it died after deleting this one's data

    def died_deleting(image):
        image.transition(Status.PENDING_DELETE)
        image.upload_worker, image.upload_lease = "elsewhere:1:1", None

    for image in (gone_already, still_there):
        service.registry.update_image(image.id, died_deleting)
    assert sorted(service.recover()) == sorted([gone_already.id, still_there.id])
    assert objects(service) == {}
    for image in (gone_already, still_there):
        assert service.registry.get_image(image.id, include_deleted=True).status is Status.DELETED


def test_delete_of_a_stale_upload_discards_its_partial_data(service):
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)

    def claimed_by_a_dead_process(img):
        img.transition(Status.SAVING)
        img.upload_worker = "elsewhere:1:1"

    service.registry.update_image(image.id, claimed_by_a_dead_process)
    objects(service)[image.id] = b"partial"
    service.deletes.delete(image.id, ADMIN)
    assert objects(service) == {}


# -- leases ---------------------------------------------------------------------------------


def test_a_slow_upload_keeps_its_lease_on_time(service):
    """An upload slower than its lease keeps it (renewed on a timer, not per bytes), so
    another host's recovery does not take it away."""
    lease = 2
    service.claims = Claims(service.registry, lease, service.plugins, service.jobs)
    service.claims.worker = "uploader-host:1:1"  # elsewhere: only the lease speaks for it
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)
    recovered = []

    def slow_body():
        yield b"x" * 100
        time.sleep(lease * 1.6)  # past the first lease: another host looks now
        recovered.extend(service_elsewhere.recover())
        yield b"y" * 100

    service_elsewhere = type(service)(service.conf, service.registry, service.stores, service.plugins)
    done = service.uploads.upload(image.id, slow_body(), declared_size=None, viewer=ADMIN)
    assert recovered == []
    assert done.status is Status.ACTIVE and objects(service)[image.id] == b"x" * 100 + b"y" * 100


def test_an_upload_that_lost_its_claim_stops(service):
    image = service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)

    def body():
        yield b"x"
        claim = service.claims._held[image.id]
        service.registry.update_image(image.id, lambda img: setattr(img, "upload_worker", "someone-else:1:1"))
        service.claims.renew(claim)
        yield b"y"

    with pytest.raises(Exception, match="deleted during the upload"):
        service.uploads.upload(image.id, body(), declared_size=None, viewer=ADMIN)
    assert objects(service) == {}


# -- background jobs ----------------------------------------------------------------------


def test_jobs_are_bounded_per_project_and_in_all():
    jobs = Jobs(workers=2, queue_size=1, per_project=2)
    release = threading.Event()
    started = []

    def job():
        started.append(threading.current_thread().name)
        release.wait(10)

    jobs.submit(job, project="a")
    jobs.submit(job, project="a")
    with pytest.raises(TooManyJobs, match="Project a has 2 background jobs"):
        jobs.submit(job, project="a")
    jobs.submit(job, project="b")  # waits for a thread
    with pytest.raises(Busy, match="no room"):
        jobs.submit(job, project="c")
    assert jobs.pending == 3
    release.set()
    assert jobs.drain(10)
    assert jobs.pending == 0 and len(started) == 3 and len(set(started)) <= 2
    with pytest.raises(Busy, match="shutting down"):
        jobs.submit(job)


def test_drain_gives_jobs_their_grace_then_tells_them_to_stop():
    jobs = Jobs(workers=2, queue_size=0, per_project=2)
    finished, stopped = [], []
    jobs.submit(lambda: (time.sleep(0.3), finished.append(True)))
    jobs.submit(lambda: stopped.append(jobs.stopping.wait(30)))
    started = time.monotonic()
    assert jobs.drain(grace=1, rollback=5)
    assert finished == [True] and stopped == [True]
    assert 1 <= time.monotonic() - started < 5


def _status(service, image_id):
    return service.registry.get_image(image_id, include_deleted=True).status
