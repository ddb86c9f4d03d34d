"""The registry's cache index with ``auth_strategy = keystone`` and a REAL Keystone: an
API node keeps it with its service token alone (cache work happens outside any user's
request, and a hit is counted as the service even inside one); a user's token, even
with the API node's service token, does not reach it; an administrator's does."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse

import pytest
import requests

from abbild import config
from abbild.caller import acting_as
from abbild.image import Status
from abbild.registry import CacheEntry, Viewer
from abbild.registry_client import HTTPRegistry
from tests.functional import keystone as ks
from tests.functional.conftest import RegistryProcess, Server
from tests.functional.helpers import wait_for
from tests.functional.test_registry_keystone import (
    API_NODE_USER,
    OWNER,
    PASSWORD,
    SERVICE_PROJECT,
    authtoken_section,
    registry_conf,  # noqa: F401 - a fixture
    token,
    tokens,  # noqa: F401 - a fixture
)

NODE = "http://api-a.example:9292"
MD5 = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def registry(tokens, registry_conf):  # noqa: F811
    """A keystone-mode registry process, and a config file of an API node using it."""
    process = RegistryProcess(registry_conf.parent, [str(registry_conf)])
    process.client_options = (
        f"auth_strategy = keystone\nauth_url = {ks.auth_url()}\nusername = {API_NODE_USER}\n"
        f"password = {PASSWORD}\nproject_name = {SERVICE_PROJECT}\n"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(registry):
    client = HTTPRegistry(config.load([registry.client_config()]))
    for entry in client.cache_entries():
        client.cache_remove(entry.node, entry.image_id)
    yield client
    client.close()


def test_the_api_node_keeps_the_index_with_its_service_token(client, tokens):  # noqa: F811
    with acting_as(Viewer("p1"), tokens["owner"]):  # inside the owner's download, say
        stored = client.cache_put(CacheEntry(NODE, "image-1", "cached", size=3, checksum=MD5))
        client.cache_hit(NODE, "image-1")
        client.cache_hit(NODE, "image-1")
    [entry] = client.cache_entries(NODE)
    assert (entry.image_id, entry.state, entry.hits) == ("image-1", "cached", 2)
    assert entry.last_modified == stored.last_modified and entry.last_accessed is not None
    assert client.cache_entries(image_id="image-2") == []
    assert client.cache_remove(NODE, "image-1") is True
    assert client.cache_entries() == []


def _call(registry, method: str, path: str, body: dict | None = None, **headers) -> requests.Response:
    data = None if body is None else json.dumps(body).encode()
    return requests.request(method, registry.url + path, data=data, headers=headers, timeout=30)


def test_users_do_not_reach_the_index(registry, client, tokens):  # noqa: F811
    client.cache_put(CacheEntry(NODE, "image-1"))
    node = urllib.parse.quote(NODE, safe="")
    calls = [
        ("GET", "/v1/cache", None),
        ("PUT", "/v1/cache", {"node": NODE, "image_id": "image-2"}),
        ("POST", "/v1/cache/hits", {"node": NODE, "image_id": "image-1"}),
        ("DELETE", f"/v1/cache?node={node}&image_id=image-1", None),
    ]
    service = tokens["service"]
    admin = token("abbild-cache-admin", OWNER[1], roles=("admin", "member"))
    for method, path, body in calls:
        as_user = _call(registry, method, path, body, **{"X-Auth-Token": tokens["owner"], "X-Service-Token": service})
        assert as_user.status_code == 403, as_user.text
        assert "cache index is for the service and administrators only" in as_user.text
        assert _call(registry, method, path, body, **{"X-Auth-Token": tokens["owner"]}).status_code == 401
        assert _call(registry, method, path, body).status_code == 401
    assert [(e.image_id, e.hits) for e in client.cache_entries()] == [("image-1", 0)]  # untouched
    for method, path, body in calls:
        as_admin = _call(registry, method, path, body, **{"X-Auth-Token": admin, "X-Service-Token": service})
        assert as_admin.status_code in (200, 204), as_admin.text
    assert client.cache_entries(image_id="image-1") == []
    assert [e.image_id for e in client.cache_entries()] == ["image-2"]


@pytest.fixture
def cached_api(registry, tmp_path):
    """An API node with the cache (prefetching every second) in front of the registry."""
    conf = tmp_path / "abbild-api.conf"
    conf.write_text(
        f"""[DEFAULT]
enabled_backends = local:filesystem
default_backend = local
image_cache_dir = {tmp_path}/cache
image_cache_prefetch_interval = 1
[paste_deploy]
flavor = keystone+cache
[local]
datadir = {tmp_path}/images
"""
        + authtoken_section(API_NODE_USER)
    )
    api = Server(tmp_path, "--config-file", str(conf), "--config-file", registry.client_config())
    api.registry = registry  # under ABBILD_TEST_REGISTRY=http too: no second registry
    api.start()
    try:
        yield api
    finally:
        api.stop()


def test_the_prefetcher_and_the_cleaner_read_the_images_of_the_index_with_the_service_token(
    cached_api,
    client,
    tokens,  # noqa: F811
):
    """An admin queues a private image; the prefetcher, outside any user's request, reads
    it with the service token alone (allowed for images in the index), and the cleaner
    can tell a deleted one. An image in nobody's index stays out of the service's reach."""
    owner = {"X-Auth-Token": tokens["owner"]}
    admin = {"X-Auth-Token": token("abbild-cache-admin", OWNER[1], roles=("admin", "member"))}
    data = os.urandom(300_000)
    ids = []
    for _ in range(2):
        resp = requests.post(
            f"{cached_api.url}/v2/images",
            headers=owner,
            json={"visibility": "private", "disk_format": "raw", "container_format": "bare"},
        )
        assert resp.status_code == 201, resp.text
        ids.append(resp.json()["id"])
        resp = requests.put(
            f"{cached_api.url}/v2/images/{ids[-1]}/file",
            data=data,
            headers={**owner, "Content-Type": "application/octet-stream"},
        )
        assert resp.status_code == 204, resp.text
    queued, elsewhere = ids

    with pytest.raises(Exception, match="No image found"):
        client.get_image(queued)  # the service token alone: not yet in the index
    assert requests.put(f"{cached_api.url}/v2/cache/{queued}", headers=admin).status_code == 202

    def cached() -> list[str]:
        resp = requests.get(f"{cached_api.url}/v2/cache", headers=admin)
        assert resp.status_code == 200, resp.text
        return [e["image_id"] for e in resp.json()["cached_images"]]

    wait_for(lambda: queued in cached(), what="the queued image prefetched")
    with open(os.path.join(cached_api.data_dir, "cache", queued), "rb") as copy:
        assert copy.read() == data
    assert client.get_image(queued).status is Status.ACTIVE

    # Cached on another node; deleted through this one, whose delete drops every node's
    # entry: the other node's cleaner (the service token again) still learns it is gone.
    client.cache_put(CacheEntry(NODE, elsewhere, "cached", size=len(data), checksum=hashlib.md5(data).hexdigest()))
    assert requests.delete(f"{cached_api.url}/v2/images/{elsewhere}", headers=owner).status_code == 204
    assert client.cache_entries(image_id=elsewhere) == []
    client.cache_put(CacheEntry(NODE, elsewhere, "cached", size=len(data), checksum=hashlib.md5(data).hexdigest()))
    assert client.get_image(elsewhere, include_deleted=True).status is Status.DELETED
