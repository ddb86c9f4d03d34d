"""The image service over a real SQLite registry and the memory driver: the order of
an upload, its rollbacks, crash recovery and the lifecycle hooks."""

import datetime
import hashlib
import uuid

import pytest

from abbild.errors import Conflict, Forbidden, Gone, ImageNotFound, SizeLimitExceeded, SizeMismatch
from abbild.image import Image, Status, utcnow
from abbild.registry import Viewer

ADMIN = Viewer(is_admin=True)


def new_image(service, **kw):
    return service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", **kw), ADMIN)


def objects(service, store="mem"):
    return service.stores[store].driver._objects


def test_upload_activates_with_hashes_and_fires_hooks(service):
    image = new_image(service)
    data = b"abc" * 1000
    done = service.uploads.upload(image.id, [data[:100], data[100:]], declared_size=len(data), viewer=ADMIN)
    assert done.status is Status.ACTIVE
    assert done.checksum == hashlib.md5(data).hexdigest()
    assert done.os_hash_value == hashlib.sha512(data).hexdigest()
    assert done.size == len(data) and done.upload_worker is None
    assert [loc.store for loc in done.locations] == ["mem"]
    assert service.recorder.events == [("created", image.id), ("uploaded", "active", "mem"), ("activated", image.id)]
    dl = service.download(image.id, ADMIN, lambda size: None)
    assert b"".join(dl.chunks) == data


def test_upload_to_a_named_store(service):
    image = new_image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN, store_name="other")
    assert len(objects(service, "other")) == 1 and not objects(service, "mem")


@pytest.mark.parametrize(
    "chunks,declared,error",
    [
        ([b"x" * (1 << 20), b"y"], None, SizeLimitExceeded),
        ([b"x" * 10], 11, SizeMismatch),
        ([b"x" * 12], 11, SizeMismatch),
    ],
)
def test_failed_upload_rolls_back(service, chunks, declared, error):
    image = new_image(service)
    with pytest.raises(error):
        service.uploads.upload(image.id, chunks, declared_size=declared, viewer=ADMIN)
    after = service.registry.get_image(image.id)
    assert after.status is Status.QUEUED and after.upload_worker is None and after.locations == []
    assert objects(service) == {}
    assert service.recorder.events[-1] == ("upload_failed", "queued", error.__name__)


def test_client_disconnect_rolls_back(service):
    image = new_image(service)

    def body():
        yield b"x" * 100
        raise OSError("connection reset")

    with pytest.raises(OSError):
        service.uploads.upload(image.id, body(), declared_size=None, viewer=ADMIN)
    assert service.registry.get_image(image.id).status is Status.QUEUED
    assert objects(service) == {}


def test_second_upload_conflicts(service):
    image = new_image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    with pytest.raises(Conflict):
        service.uploads.upload(image.id, [b"y"], declared_size=1, viewer=ADMIN)
    assert len(objects(service)) == 1


def test_delete_during_upload_removes_the_data(service):
    image = new_image(service)

    def body():
        yield b"x" * 10
        service.deletes.delete(image.id, ADMIN)  # another request deletes the image mid-upload
        yield b"y" * 10

    with pytest.raises(Gone):
        service.uploads.upload(image.id, body(), declared_size=None, viewer=ADMIN)
    assert objects(service) == {}
    with pytest.raises(ImageNotFound):
        service.registry.get_image(image.id)


def test_formats_are_required_before_data(service):
    image = service.create(Image(id=str(uuid.uuid4())), ADMIN)
    with pytest.raises(Exception, match="disk_format must be set"):
        service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    assert service.registry.get_image(image.id).status is Status.QUEUED


def test_protected_images_are_not_deleted(service):
    image = new_image(service, protected=True)
    with pytest.raises(Forbidden):
        service.deletes.delete(image.id, ADMIN)
    assert service.registry.get_image(image.id).status is Status.QUEUED


def test_delete_removes_data_and_fires_hook(service):
    image = new_image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    service.deletes.delete(image.id, ADMIN)
    assert objects(service) == {}
    assert service.recorder.events[-1] == ("deleted", "deleted")


def test_deactivated_download_is_admin_only(service):
    image = new_image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    service.set_active(image.id, False, ADMIN)
    with pytest.raises(Forbidden):
        service.download(image.id, Viewer(project_id="p", roles=("member", "reader")), lambda size: None)
    assert service.download(image.id, ADMIN, lambda size: None) is not None
    service.set_active(image.id, True, ADMIN)
    assert service.registry.get_image(image.id).status is Status.ACTIVE


def _claimed(service, worker, lease_seconds, complete=False):
    """An image left in 'saving' by *worker*, with data written under its key."""
    image = new_image(service)

    def claim(img):
        img.transition(Status.SAVING)
        img.upload_worker = worker
        img.upload_lease = utcnow() + datetime.timedelta(seconds=lease_seconds)

    service.registry.update_image(image.id, claim)
    if complete:
        service.stores["mem"].put(image.id, [b"complete"], 8)
    return image.id


def test_recovery_resets_dead_local_workers_and_expired_leases(service):
    import socket

    dead_local = _claimed(service, f"{socket.gethostname()}:999999999:1", 3600, complete=True)
    expired_remote = _claimed(service, "elsewhere:1:1", -5)
    live_remote = _claimed(service, "elsewhere:2:2", 3600)
    ours = _claimed(service, service.claims.worker, 3600)

    assert sorted(service.recover()) == sorted([dead_local, expired_remote])
    for image_id in (dead_local, expired_remote):
        image = service.registry.get_image(image_id)
        assert image.status is Status.QUEUED and image.upload_worker is None
    for image_id in (live_remote, ours):
        assert service.registry.get_image(image_id).status is Status.SAVING
    assert objects(service) == {}, "complete but never activated data must be discarded"


def test_delete_from_one_store_keeps_the_other(service):
    from abbild.image import Location

    image = new_image(service)
    service.uploads.upload(image.id, [b"data"], declared_size=4, viewer=ADMIN, store_name="mem")
    copy = service.stores["other"].put(image.id, [b"data"], 4)
    service.registry.update_image(image.id, lambda i: i.locations.append(Location("other", copy.uri, 4)))

    service.deletes.delete_from_store(image.id, "mem", ADMIN)
    after = service.registry.get_image(image.id)
    assert [loc.store for loc in after.locations] == ["other"]
    assert objects(service, "mem") == {} and len(objects(service, "other")) == 1
    assert b"".join(service.download(image.id, ADMIN, lambda size: None).chunks) == b"data"
    with pytest.raises(Forbidden):
        service.deletes.delete_from_store(image.id, "other", ADMIN)


def test_download_falls_back_to_the_next_location(service):
    from abbild.image import Location

    image = new_image(service)
    service.uploads.upload(image.id, [b"data"], declared_size=4, viewer=ADMIN, store_name="mem")
    # A location whose data vanished comes first (store weight); the next one serves.
    service.stores["other"].weight = 5
    service.registry.update_image(
        image.id, lambda i: i.locations.insert(0, Location("other", "memory://other/gone", 4))
    )
    dl = service.download(image.id, ADMIN, lambda size: None)
    assert dl.store.name == "mem" and b"".join(dl.chunks) == b"data"


def test_a_zombie_worker_is_dead():
    import os
    import signal
    import time

    from abbild.uploads import worker_alive, worker_identity

    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    identity = worker_identity(pid)
    assert worker_alive(identity) is True
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)  # killed, not reaped: a zombie keeps its /proc entry
    try:
        assert worker_alive(identity) is False
    finally:
        os.waitpid(pid, 0)
    assert worker_alive(identity) is False
    assert worker_alive("some-other-host:1:1") is None


def test_member_quota(service):
    from abbild.errors import QuotaExceeded

    service.conf.set_override("image_member_quota", 2)
    owner = Viewer(project_id="owner", roles=("member", "reader"))
    image = service.create(Image(id=str(uuid.uuid4()), owner="owner"), owner)
    service.add_member(image.id, "a", owner)
    service.add_member(image.id, "b", owner)
    with pytest.raises(QuotaExceeded, match="maximum of 2 members"):
        service.add_member(image.id, "c", owner)
    service.delete_member(image.id, "a", owner)
    service.add_member(image.id, "c", owner)  # room again after a removal
    assert sorted(m.member_id for m in service.list_members(image.id, owner)) == ["b", "c"]


@pytest.mark.parametrize("zero_copy", [False, True])
def test_downloads_of_a_cached_image_whole_or_ranged_come_from_the_cache(service, tmp_path, zero_copy):
    from abbild.cache import ImageCache

    service.conf.set_override("image_cache_dir", str(tmp_path / "cache"))
    cache = ImageCache.from_config(service.conf, service.registry)
    image = new_image(service)
    data = bytes(range(256)) * 4000
    service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)

    def read(dl) -> bytes:
        if dl.file is None:
            return b"".join(dl.chunks)
        with dl.file as f:
            return f.read(dl.length)

    ranged = service.download(image.id, ADMIN, lambda size: (10, 100), zero_copy=zero_copy, cache=cache)
    assert ranged.store is not None and read(ranged) == data[10:110]  # a ranged miss fills nothing
    assert cache.cached() == []
    miss = service.download(image.id, ADMIN, lambda size: None, zero_copy=zero_copy, cache=cache)
    assert miss.store is not None and b"".join(miss.chunks) == data
    assert [e.image_id for e in cache.cached()] == [image.id]

    objects(service).clear()  # from here on, only the cache has the data
    hit = service.download(image.id, ADMIN, lambda size: None, zero_copy=zero_copy, cache=cache)
    assert hit.store is None and (hit.offset, hit.length, hit.partial) == (0, len(data), False)
    assert read(hit) == data
    part = service.download(image.id, ADMIN, lambda size: (size - 5, 5), zero_copy=zero_copy, cache=cache)
    assert part.store is None and (part.offset, part.length, part.partial) == (len(data) - 5, 5, True)
    assert read(part) == data[-5:]
    assert (hit.file is not None) is zero_copy
    assert cache.cached()[0].hits == 2
