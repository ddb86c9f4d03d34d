"""Four concurrent writers (creates and PATCHes) on the default SQLite registry: zero
errors and no lost update, with one server process and with two."""

from __future__ import annotations

import threading

import pytest
import requests

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
WRITERS, ROUNDS = 4, 25


@pytest.mark.parametrize("workers", ["1", "2"])
def test_four_writers_lose_nothing(make_server, tmp_path, workers):
    srv = make_server("--workers", workers, data_dir=str(tmp_path / f"w{workers}")).start()
    shared = requests.post(f"{srv.url}/v2/images", json={"name": "shared"}).json()["id"]
    failures: list[str] = []
    created: list[str] = []

    def writer(n: int) -> None:
        with requests.Session() as http:
            for i in range(ROUNDS):
                resp = http.post(f"{srv.url}/v2/images", json={"name": f"w{n}-{i}", "tags": [f"writer-{workers}"]})
                if resp.status_code != 201:
                    failures.append(f"create: {resp.status_code} {resp.text[:200]}")
                    continue
                created.append(resp.json()["id"])
                ops = [{"op": "add", "path": f"/w{n}_{i}", "value": str(i)}]
                resp = http.patch(f"{srv.url}/v2/images/{shared}", json=ops, headers=PATCH)
                if resp.status_code != 200:
                    failures.append(f"patch: {resp.status_code} {resp.text[:200]}")
                resp = http.put(f"{srv.url}/v2/images/{shared}/tags/t{n}-{i}")
                if resp.status_code != 204:
                    failures.append(f"tag: {resp.status_code} {resp.text[:200]}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert failures == []
    image = requests.get(f"{srv.url}/v2/images/{shared}").json()
    expected = {f"w{n}_{i}" for n in range(WRITERS) for i in range(ROUNDS)}
    assert expected <= set(image), f"lost updates: {sorted(expected - set(image))[:10]}"
    assert set(image["tags"]) == {f"t{n}-{i}" for n in range(WRITERS) for i in range(ROUNDS)}
    listed = requests.get(f"{srv.url}/v2/images", params={"tag": f"writer-{workers}", "limit": 1000}).json()
    assert sorted(i["id"] for i in listed["images"]) == sorted(created)
    assert len(created) == WRITERS * ROUNDS
