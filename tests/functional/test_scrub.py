"""``abbild scrub`` from the user's side, on the filesystem store and on Ceph RBD: a
delete with ``delayed_delete`` hides the image at once and keeps its data until the
scrubber runs after ``scrub_time``; data a store cannot delete (a read-only data
directory, an RBD clone) stays listed and is deleted once the store lets it, retried
with backoff by the daemon; ``--restore`` brings a delayed delete back with its data
and refuses what it cannot bring back; two scrubbers at once delete each image's data
exactly once, and a restore racing a scrubber ends restored with all its data or
deleted, never active without it. With ABBILD_TEST_REGISTRY=http every command goes
through the deployment's ``abbild registry``."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid

import pytest
import requests

from abbild import config
from abbild.db.registry import SQLRegistry
from abbild.errors import Conflict, NotFound
from abbild.image import Image, Status, utcnow
from abbild.stores import StoreManager
from tests.functional.conftest import Server
from tests.functional.helpers import wait_for
from tests.functional.stores import _env_file, _one_store

OCTET = {"Content-Type": "application/octet-stream"}


@dataclasses.dataclass
class Deployment:
    store: str  # the driver: filesystem or rbd
    server: Server
    base: str
    config_files: list[str]  # what the API server reads, and the scrubber with it
    registry: SQLRegistry  # the database itself, to look behind the API
    stores: StoreManager

    @property
    def url(self) -> str:
        return self.server.url

    def command_files(self) -> list[str]:
        """The server's config, and the registry client's with ABBILD_TEST_REGISTRY=http."""
        if self.server.registry is None:
            return self.config_files
        return [*self.config_files, self.server.registry.client_config()]


def _store_section(store: str, base) -> str:
    if store == "filesystem":
        return _one_store("filesystem", f"datadir = {base}/images\n")
    ceph = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_CONF")
    return _one_store(
        "rbd",
        f"pool = {ceph.get('CEPH_RBD_POOL', 'images')}\nuser = {ceph.get('CEPH_USER', 'admin')}\n"
        f"ceph_conf = {ceph['CEPH_CONF']}\nkeyring = {ceph['CEPH_ADMIN_KEYRING']}\n",
    )


def deploy(base, store: str, delayed: bool) -> Deployment:
    conf = base / "abbild-api.conf"
    # scrub_interval = 0: no scrubber inside the server; the tests run abbild scrub.
    conf.write_text(
        f"{_store_section(store, base)}\n"
        f"[DEFAULT]\ndelayed_delete = {str(delayed).lower()}\nscrub_interval = 0\n"
        f"[database]\nconnection = sqlite:///{base}/abbild.sqlite\n"
    )
    server = Server(base, "--config-file", str(conf)).start()
    files = [str(conf)]
    loaded = config.load(files)
    return Deployment(
        store,
        server,
        str(base),
        files,
        SQLRegistry(url=f"sqlite:///{base}/abbild.sqlite"),
        StoreManager(loaded),
    )


@pytest.fixture(scope="module", params=["filesystem", pytest.param("rbd", marks=pytest.mark.backend("ceph"))])
def deployment(request, tmp_path_factory):
    dep = deploy(tmp_path_factory.mktemp(f"scrub-{request.param}"), request.param, delayed=True)
    yield dep
    dep.server.stop()
    dep.registry.close()


def scrub(dep: Deployment, *args: str, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """``abbild scrub`` with the deployment's config and *options* as ``[DEFAULT]`` lines
    (``scrub_time=0``), verbose: its log names every delete it asks a store for."""
    extra = os.path.join(dep.base, f"scrub-{uuid.uuid4().hex[:8]}.conf")
    with open(extra, "w") as f:
        f.write("[DEFAULT]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "-v", "scrub", *args]
        + [a for path in [*dep.command_files(), extra] for a in ("--config-file", path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "ABBILD_CONFIG_DIR": "/nonexistent"},
    )


def counts_of(proc: subprocess.CompletedProcess) -> dict[str, int]:
    return json.loads(proc.stdout.splitlines()[-1])


def deletes_asked(log: str) -> list[str]:
    """The store deletes a scrubber asked for, as ``image uri`` strings, from its log."""
    return [f"{m[0]} {m[1]}" for m in re.findall(r"image (\S+): deleting its data (\S+) in store", log)]


def upload(dep: Deployment, data: bytes) -> str:
    resp = requests.post(f"{dep.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, timeout=30)
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    resp = requests.put(f"{dep.url}/v2/images/{image_id}/file", data=data, headers=OCTET, timeout=120)
    assert resp.status_code == 204, resp.text
    return image_id


def delete(dep: Deployment, image_id: str) -> None:
    resp = requests.delete(f"{dep.url}/v2/images/{image_id}", timeout=60)
    assert resp.status_code == 204, resp.text


def stored(dep: Deployment, image_id: str) -> Image:
    return dep.registry.get_image(image_id, include_deleted=True)


def data_in_store(dep: Deployment, image: Image) -> list[int | None]:
    """The size of each location's data in its store, ``None`` where it is gone."""
    sizes = []
    for location in image.locations:
        try:
            sizes.append(dep.stores[location.store].size(location.uri))
        except NotFound:
            sizes.append(None)
    return sizes


def invisible(dep: Deployment, image_id: str) -> bool:
    listed = requests.get(f"{dep.url}/v2/images?limit=1000", timeout=30).json()["images"]
    return requests.get(f"{dep.url}/v2/images/{image_id}", timeout=30).status_code == 404 and image_id not in [
        i["id"] for i in listed
    ]


def download(dep: Deployment, image_id: str) -> bytes:
    resp = requests.get(f"{dep.url}/v2/images/{image_id}/file", timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.content


# -- delayed delete -------------------------------------------------------------------------


def test_delayed_delete_keeps_the_data_until_scrub_time(deployment):
    data = os.urandom(1 << 20)
    image_id = upload(deployment, data)
    before = stored(deployment, image_id)
    delete(deployment, image_id)
    assert invisible(deployment, image_id)
    waiting = stored(deployment, image_id)
    assert waiting.status is Status.PENDING_DELETE and waiting.deleted_at is not None
    assert data_in_store(deployment, waiting) == [len(data)]

    early = scrub(deployment, "--json", scrub_time=3600)
    assert early.returncode == 0, early.stderr
    assert counts_of(early)["waiting"] >= 1 and image_id not in early.stderr
    assert data_in_store(deployment, stored(deployment, image_id)) == [len(data)]

    due = scrub(deployment, "--json", scrub_time=0)
    assert due.returncode == 0, due.stderr
    assert counts_of(due)["deleted"] >= 1
    assert deletes_asked(due.stderr).count(f"{image_id} {before.locations[0].uri}") == 1
    assert stored(deployment, image_id).status is Status.DELETED
    assert data_in_store(deployment, before) == [None]
    assert invisible(deployment, image_id)


def test_restore_brings_the_image_back_with_its_data(deployment):
    data = os.urandom(1 << 20)
    image_id = upload(deployment, data)
    delete(deployment, image_id)
    proc = scrub(deployment, "--restore", image_id)
    assert proc.returncode == 0, proc.stderr
    assert f"image {image_id} restored: active, with 1 location(s)" in proc.stdout
    assert requests.get(f"{deployment.url}/v2/images/{image_id}", timeout=30).json()["status"] == "active"
    assert download(deployment, image_id) == data
    # A scrubber now leaves it alone.
    assert image_id not in scrub(deployment, "--json", scrub_time=0).stderr
    assert download(deployment, image_id) == data


def test_restore_refuses_what_it_cannot_bring_back(deployment):
    live = upload(deployment, b"live")
    proc = scrub(deployment, "--restore", live)
    assert proc.returncode == 2 and "has status 'active', not 'pending_delete'" in proc.stderr, proc.stderr
    proc = scrub(deployment, "--restore", str(uuid.uuid4()))
    assert proc.returncode == 2 and "No image found" in proc.stderr and "Traceback" not in proc.stderr

    held = upload(deployment, b"held")
    delete(deployment, held)

    def claimed_by_a_scrubber_on_another_host(image: Image) -> None:
        image.upload_worker, image.deleted_at = "scrubber-b.example:4242:1", None
        image.upload_lease = utcnow().replace(year=utcnow().year + 1)

    deployment.registry.update_image(held, claimed_by_a_scrubber_on_another_host)
    proc = scrub(deployment, "--restore", held)
    assert proc.returncode == 2 and "scrubber-b.example:4242:1 is deleting its data right now" in proc.stderr
    assert stored(deployment, held).status is Status.PENDING_DELETE

    gone = upload(deployment, b"gone")
    delete(deployment, gone)
    assert scrub(deployment, scrub_time=0).returncode == 0
    proc = scrub(deployment, "--restore", gone)
    assert proc.returncode == 2 and "is deleted and its data is gone" in proc.stderr, proc.stderr
    deployment.registry.update_image(held, lambda i: setattr(i, "upload_lease", utcnow()))  # that host died


# -- data a store cannot delete ---------------------------------------------------------------


class Fault:
    """What keeps a store from deleting an image's data, for real: the filesystem's data
    directory made immutable (a read-only mount would do the same), an RBD clone of
    the image's snapshot (a volume booted from it)."""

    def __init__(self, dep: Deployment, image: Image) -> None:
        self.dep, self.image = dep, image
        self.clone: str | None = None

    def __enter__(self) -> Fault:
        if self.dep.store == "filesystem":
            subprocess.run(["chattr", "+i", os.path.join(self.dep.base, "images")], check=True)
        else:
            import rbd

            self.clone = f"clone-{uuid.uuid4().hex[:8]}"
            with CephPool() as ioctx:
                rbd.RBD().clone(ioctx, self.image.id, "snap", ioctx, self.clone, features=rbd.RBD_FEATURE_LAYERING)
        return self

    def end(self) -> None:
        if self.dep.store == "filesystem":
            subprocess.run(["chattr", "-i", os.path.join(self.dep.base, "images")], check=True)
        elif self.clone is not None:
            import rbd

            with CephPool() as ioctx:
                rbd.RBD().remove(ioctx, self.clone)
            self.clone = None

    def __exit__(self, *exc) -> None:
        self.end()

    @property
    def outcome(self) -> str:
        """How the scrubber counts the image while the fault lasts."""
        return "failed" if self.dep.store == "filesystem" else "in_use"


class CephPool:
    """An admin connection of the test's own to the pool."""

    def __enter__(self):
        import rados

        ceph = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_CONF")
        self.cluster = rados.Rados(
            conffile=ceph["CEPH_CONF"],
            rados_id=ceph.get("CEPH_USER", "admin"),
            conf={"keyring": ceph["CEPH_ADMIN_KEYRING"]},
        )
        self.cluster.connect()
        self.ioctx = self.cluster.open_ioctx(ceph.get("CEPH_RBD_POOL", "images"))
        return self.ioctx

    def __exit__(self, *exc):
        self.ioctx.close()
        self.cluster.shutdown()


def test_data_the_store_cannot_delete_stays_until_it_can(deployment):
    data = os.urandom(1 << 20)
    image_id = upload(deployment, data)
    image = stored(deployment, image_id)
    delete(deployment, image_id)
    with Fault(deployment, image) as fault:
        proc = scrub(deployment, "--json", scrub_time=0)
        assert proc.returncode == 1, proc.stderr
        assert counts_of(proc)[fault.outcome] >= 1
        assert "some data could not be deleted yet" in proc.stderr
        left = stored(deployment, image_id)
        assert left.status is Status.PENDING_DELETE and left.upload_worker is None
        assert left.locations == image.locations and data_in_store(deployment, left) == [len(data)]
        assert invisible(deployment, image_id)
        # Its deletion has begun: it is never restored, even with all its data still there.
        proc = scrub(deployment, "--restore", image_id)
        assert proc.returncode == 2 and "the deletion of its data has begun" in proc.stderr, proc.stderr
    proc = scrub(deployment, "--json", scrub_time=3600)  # due at once, whatever scrub_time says
    assert proc.returncode == 0 and counts_of(proc)["deleted"] >= 1, proc.stderr
    assert stored(deployment, image_id).status is Status.DELETED
    assert data_in_store(deployment, image) == [None]


def test_an_immediate_delete_during_an_outage_is_scrubbed_after_it(tmp_path):
    """Without delayed_delete the API deletes the data itself; what a store could not
    delete goes to the scrubber, whose daemon retries with growing waits."""
    dep = deploy(tmp_path, "filesystem", delayed=False)
    try:
        data = os.urandom(1 << 20)
        image_id = upload(dep, data)
        image = stored(dep, image_id)
        with Fault(dep, image):
            delete(dep, image_id)  # accepted: the data goes later
            assert invisible(dep, image_id)
            left = stored(dep, image_id)
            assert left.status is Status.PENDING_DELETE and left.deleted_at is None and left.upload_worker is None
            assert data_in_store(dep, left) == [len(data)]
            lines = _daemon_lines(dep, passes=7)
            attempts = [n for n, counts in enumerate(lines) if counts["failed"]]
            # Passes every second; attempts after 1, 2, 4 s of waiting, the rest backing off.
            assert len(lines) >= 7 and 3 <= len(attempts) <= 4, lines
            assert all(counts["backing_off"] == 1 for counts in lines if not counts["failed"])
        proc = scrub(dep, "--json")
        assert proc.returncode == 0 and counts_of(proc)["deleted"] == 1, proc.stderr
        assert stored(dep, image_id).status is Status.DELETED and data_in_store(dep, image) == [None]
    finally:
        dep.server.stop()
        dep.registry.close()


def _daemon_lines(dep: Deployment, passes: int) -> list[dict[str, int]]:
    """The first *passes* passes of ``abbild scrub --daemon --json`` (scrub_interval =
    1), counted as they come (a fixed time held fewer on a busy machine); SIGTERM then
    stops it, with exit status 0."""
    extra = os.path.join(dep.base, "daemon.conf")
    with open(extra, "w") as f:
        f.write("[DEFAULT]\nscrub_interval = 1\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "abbild_cmd.cli", "scrub", "--daemon", "--json"]
        + [a for path in [*dep.command_files(), extra] for a in ("--config-file", path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "ABBILD_CONFIG_DIR": "/nonexistent"},
    )
    # A daemon that stops passing is stopped all the same, and the count below fails.
    stuck = threading.Timer(120, proc.send_signal, (signal.SIGTERM,))
    stuck.start()
    try:
        lines = []
        while len(lines) < passes and (line := proc.stdout.readline()):
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        stuck.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
    return [json.loads(line) for line in lines + out.splitlines()]


# -- several at once --------------------------------------------------------------------------


def test_two_scrubbers_at_once_delete_each_images_data_once(deployment):
    images = [upload(deployment, os.urandom(64 << 10)) for _ in range(24)]
    before = {image_id: stored(deployment, image_id) for image_id in images}
    for image_id in images:
        delete(deployment, image_id)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: scrub(deployment, "--json", scrub_time=0, scrub_batch_size=2), range(2)))
    for run in runs:
        assert run.returncode == 0, run.stderr
    asked = [[entry for entry in deletes_asked(run.stderr) if entry.split()[0] in before] for run in runs]
    # Every image's data asked of the store exactly once, by one scrubber or the other.
    assert sorted(asked[0] + asked[1]) == sorted(f"{i.id} {i.locations[0].uri}" for i in before.values())
    print(f"the two scrubbers deleted {len(asked[0])} and {len(asked[1])} images' data")
    if deployment.store == "rbd":  # a delete takes long enough there for both to be at work at once
        assert asked[0] and asked[1]
    for image_id, image in before.items():
        assert stored(deployment, image_id).status is Status.DELETED
        assert data_in_store(deployment, image) == [None]


def test_a_restore_racing_a_scrubber_never_leaves_an_active_image_without_data(deployment):
    from abbild.scrubber import Scrubber
    from abbild.service import ImageService

    payloads = {}
    for _ in range(12):
        data = os.urandom(64 << 10)
        payloads[upload(deployment, data)] = data
    before = {image_id: stored(deployment, image_id) for image_id in payloads}
    for image_id in payloads:
        delete(deployment, image_id)
    service = ImageService.from_config(config.load(deployment.command_files()), recover=False)
    restorer = Scrubber(service)
    restored = set()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            scrubbing = pool.submit(scrub, deployment, "--json", scrub_time=0, scrub_batch_size=1)

            # Restore while the scrubber is at work: some images are gone by then, one is
            # held, the rest still waits.
            # (On a fast store it may have scrubbed everything before the first look.)
            def begun() -> bool:
                images = [stored(deployment, i) for i in payloads]
                return any(i.deleted_at is None or i.status is Status.DELETED for i in images)

            wait_for(begun, timeout=60, what="the scrubber at work")
            for image_id in payloads:
                try:
                    restorer.restore(image_id)
                    restored.add(image_id)
                except Conflict:
                    pass
            run = scrubbing.result()
    finally:
        service.registry.close()
    assert run.returncode == 0, run.stderr
    for image_id, data in payloads.items():
        image = stored(deployment, image_id)
        if image_id in restored:
            assert image.status is Status.ACTIVE and download(deployment, image_id) == data
        else:
            assert image.status is Status.DELETED and data_in_store(deployment, before[image_id]) == [None]
    print(f"{len(restored)} of {len(payloads)} restored, the rest scrubbed")
