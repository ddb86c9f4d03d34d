"""Scale-out as operators run it: two ``abbild api`` nodes sharing one MariaDB database
and one Ceph RBD store, each with its own image cache. What one node changes, the other
answers for at once: no stale cached data after a delete or a deactivation elsewhere,
each node's cache API shows its own entries, and a node killed mid-download leaves the
other serving."""

from __future__ import annotations

import hashlib
import os
import signal

import pytest
import requests

from tests.conftest import _sql_database, _sql_migrate
from tests.functional.conftest import ApiProcess, free_port
from tests.functional.helpers import wait_for, who
from tests.functional.stores import _env_file

pytestmark = [pytest.mark.backend("mariadb"), pytest.mark.backend("ceph")]

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
OCTET = {"Content-Type": "application/octet-stream"}


class Node(ApiProcess):
    """One ``abbild api`` process (one worker) with its own config dir and cache."""

    def __init__(self, base, database: str, ceph: dict[str, str], pool: str) -> None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        super().__init__(
            base,
            port,
            f"""[DEFAULT]
bind_port = {port}
workers = 1
log_file = {base}/abbild-api.log
enabled_backends = ceph:rbd
default_backend = ceph
image_cache_dir = {base}/cache
worker_self_reference_url = {url}
[database]
connection = {database}
[paste_deploy]
flavor = trusted-headers+cache
[ceph]
pool = {pool}
user = {ceph.get("CEPH_USER", "admin")}
ceph_conf = {ceph["CEPH_CONF"]}
keyring = {ceph["CEPH_ADMIN_KEYRING"]}
""",
        )


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    ceph = _env_file(os.environ.get("CEPH_DIR", "/tmp/abbild-ceph") + "/env.sh", "CEPH_CONF")
    base = tmp_path_factory.mktemp("two-nodes")
    with _sql_database("mariadb", base) as database:
        _sql_migrate(database)
        started = []
        try:
            for name in ("a", "b"):
                started.append(Node(base / name, database, ceph, ceph.get("CEPH_RBD_POOL", "images")))
            yield started
        finally:
            for node in started:
                node.stop()


@pytest.fixture
def project():
    return f"p-{os.urandom(4).hex()}"


def upload(node: Node, headers: dict, data: bytes) -> str:
    resp = requests.post(
        f"{node.url}/v2/images", json={"disk_format": "raw", "container_format": "bare"}, headers=headers
    )
    assert resp.status_code == 201, resp.text
    image_id = resp.json()["id"]
    resp = requests.put(f"{node.url}/v2/images/{image_id}/file", data=data, headers={**headers, **OCTET})
    assert resp.status_code == 204, resp.text
    return image_id


def cached_ids(node: Node) -> set[str]:
    resp = requests.get(f"{node.url}/v2/cache", headers=who("admins", "admin"))
    assert resp.status_code == 200, resp.text
    return {entry["image_id"] for entry in resp.json()["cached_images"]}


def test_a_node_caches_what_it_serves_and_answers_for_changes_made_on_the_other(nodes, project):
    a, b = nodes
    owner = who(project)
    data = os.urandom(5 << 20)
    image_id = upload(a, owner, data)

    for _ in range(2):  # a miss, which fills b's cache, then a hit
        resp = requests.get(f"{b.url}/v2/images/{image_id}/file", headers=owner)
        assert resp.status_code == 200 and resp.content == data
        assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    wait_for(lambda: image_id in cached_ids(b), what="the copy in the cache index")
    assert image_id not in cached_ids(a)  # each node answers for its own cache

    # Deactivated on a: b's cached copy is not served to the owner any more.
    assert requests.post(f"{a.url}/v2/images/{image_id}/actions/deactivate", headers=who(project, "admin")).ok
    assert requests.get(f"{b.url}/v2/images/{image_id}/file", headers=owner).status_code == 403
    assert requests.post(f"{a.url}/v2/images/{image_id}/actions/reactivate", headers=who(project, "admin")).ok
    resp = requests.get(f"{b.url}/v2/images/{image_id}/file", headers=owner)
    assert resp.status_code == 200 and resp.content == data

    # Renamed on b: a answers with the new name at once (no node keeps metadata).
    rename = [{"op": "replace", "path": "/name", "value": "renamed-on-b"}]
    assert requests.patch(f"{b.url}/v2/images/{image_id}", json=rename, headers={**owner, **PATCH}).ok
    assert requests.get(f"{a.url}/v2/images/{image_id}", headers=owner).json()["name"] == "renamed-on-b"

    # Deleted on a: gone on b at once, b's cache API no longer lists it, and b's
    # cleaner removes the file it still holds.
    assert requests.delete(f"{a.url}/v2/images/{image_id}", headers=owner).status_code == 204
    assert requests.get(f"{b.url}/v2/images/{image_id}/file", headers=owner).status_code == 404
    assert image_id not in cached_ids(b)
    assert (b.base / "cache" / image_id).exists()
    assert requests.post(f"{b.url}/v2/cache/clean", headers=who("admins", "admin")).status_code == 200
    assert not (b.base / "cache" / image_id).exists()


def test_an_image_cached_on_both_nodes_and_deleted_on_one_leaves_neither(nodes, project):
    a, b = nodes
    owner = who(project)
    data = os.urandom(1 << 20)
    image_id = upload(a, owner, data)
    for node in nodes:
        assert requests.get(f"{node.url}/v2/images/{image_id}/file", headers=owner).content == data
        # Published just after the last byte went out.
        wait_for(lambda node=node: image_id in cached_ids(node), what="the copy in the cache index")
    assert requests.delete(f"{b.url}/v2/images/{image_id}", headers=owner).status_code == 204
    for node in nodes:
        assert requests.get(f"{node.url}/v2/images/{image_id}/file", headers=owner).status_code == 404
        assert image_id not in cached_ids(node)
    assert not (b.base / "cache" / image_id).exists()  # the deleting node's copy goes at once
    assert requests.post(f"{a.url}/v2/cache/clean", headers=who("admins", "admin")).status_code == 200
    assert not (a.base / "cache" / image_id).exists()


def test_a_node_killed_mid_download_leaves_the_other_serving(nodes, project):
    a, b = nodes
    owner = who(project)
    data = os.urandom(64 << 20)
    image_id = upload(b, owner, data)
    with requests.get(f"{a.url}/v2/images/{image_id}/file", headers=owner, stream=True) as partial:
        assert partial.status_code == 200
        next(partial.iter_content(1 << 20))
        a.stop(signal.SIGKILL)
        with pytest.raises(requests.exceptions.RequestException):
            for _ in partial.iter_content(1 << 20):
                pass
    resp = requests.get(f"{b.url}/v2/images/{image_id}/file", headers=owner)
    assert resp.status_code == 200 and hashlib.md5(resp.content).digest() == hashlib.md5(data).digest()
    # The killed node's half-written copy was never published in its cache.
    assert not (a.base / "cache" / image_id).exists()
    assert requests.get(f"{b.url}/v2/images/{image_id}", headers=owner).json()["status"] == "active"
