"""``abbild db purge`` from the user's side, on each database (SQLite, MariaDB,
PostgreSQL: one ``abbild serve`` per database for this module): images deleted through
the API and aged in the database are purged by the command, newer and live ones stay,
and a purged id can never be used again: POST /v2/images, python-glanceclient and
openstacksdk get the same 409 as for an id in use. Also the command over the http
registry, its output, its exit codes and its messages for bad arguments."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import uuid

import openstack
import pytest
import requests
from glanceclient import Client as GlanceClient
from glanceclient import exc as glance_exc
from openstack import exceptions as sdk_exceptions
from sqlalchemy import update

from abbild.db.models import ImageRow
from abbild.db.registry import SQLRegistry, make_engine
from abbild.errors import ImageNotFound
from tests.conftest import SQL_BACKENDS
from tests.functional.conftest import server_on_database

JSON = {"Accept": "application/json", "Content-Type": "application/json"}

pytestmark = [
    pytest.mark.filterwarnings("ignore::openstack.warnings.OpenStackDeprecationWarning"),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
]


@dataclasses.dataclass
class Deployment:
    url: str
    config_files: list[str]
    database: str
    base: str


@pytest.fixture(scope="module", params=SQL_BACKENDS)
def deployment(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"purge-{request.param}")
    with server_on_database(request.param, base) as (srv, config_files, database):
        yield Deployment(srv.url, config_files, database, str(base))


def purge_cli(*args: str, config_files=(), config_dir: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "ABBILD_CONFIG_DIR": config_dir or "/nonexistent"}
    files = [a for f in config_files for a in ("--config-file", f)]
    return subprocess.run(
        [sys.executable, "-m", "abbild_cmd.cli", "db", "purge", *args, *files],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def purged(deployment: Deployment, *args: str, config_files=None) -> dict:
    proc = purge_cli("--json", *args, config_files=config_files or deployment.config_files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["removed"]


def make_image(url: str, **fields) -> str:
    body = {"name": "purge-test", "disk_format": "raw", "container_format": "bare", **fields}
    resp = requests.post(f"{url}/v2/images", json=body, headers=JSON)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def deleted_image(url: str) -> str:
    """An image with data, properties, tags and a member, deleted through the API."""
    image_id = make_image(url, visibility="shared", tags=["gold"], os_distro="debian")
    resp = requests.put(
        f"{url}/v2/images/{image_id}/file", data=b"abc", headers={"Content-Type": "application/octet-stream"}
    )
    assert resp.status_code == 204, resp.text
    assert requests.post(f"{url}/v2/images/{image_id}/members", json={"member": "p2"}, headers=JSON).ok
    assert requests.delete(f"{url}/v2/images/{image_id}").status_code == 204
    return image_id


def age(deployment: Deployment, image_id: str, days: float) -> None:
    """Pretend the image was deleted *days* days ago."""
    engine = make_engine(deployment.database)
    try:
        with engine.begin() as conn:
            when = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(days=days)
            conn.execute(update(ImageRow).where(ImageRow.id == image_id).values(deleted_at=when))
    finally:
        engine.dispose()


def conflict(url: str, image_id: str) -> requests.Response:
    """The answer to creating an image with *image_id*, which must be a 409."""
    resp = requests.post(f"{url}/v2/images", json={"id": image_id, "name": "again"}, headers=JSON)
    assert resp.status_code == 409, resp.text
    return resp


def test_old_deleted_images_go_their_ids_stay_taken(deployment):
    old, recent = deleted_image(deployment.url), deleted_image(deployment.url)
    live = make_image(deployment.url, tags=["kept"])
    age(deployment, old, days=40)
    age(deployment, recent, days=20)

    removed = purged(deployment, "--age-in-days", "30")
    assert (removed["images"], removed["image_tags"], removed["image_members"]) == (1, 1, 1)
    assert removed["image_properties"] >= 1  # os_distro
    assert purged(deployment, "--age-in-days", "30")["images"] == 0

    assert requests.get(f"{deployment.url}/v2/images/{old}").status_code == 404
    assert requests.get(f"{deployment.url}/v2/images/{live}").json()["tags"] == ["kept"]
    # The same answer as for an image in use, and for one deleted but not purged yet.
    answers = {image_id: conflict(deployment.url, image_id) for image_id in (old, recent, live)}
    bodies = {answer.text.replace(image_id, "ID") for image_id, answer in answers.items()}
    assert len(bodies) == 1, bodies
    assert f"An image with identifier {old} already exists" in answers[old].text
    assert answers[old].headers["Content-Type"] == answers[live].headers["Content-Type"]


def test_the_clients_get_a_conflict_for_a_purged_id(deployment):
    image_id = deleted_image(deployment.url)
    age(deployment, image_id, days=31)
    assert purged(deployment)["images"] >= 1  # the default age: 30 days

    glance = GlanceClient("2", endpoint=deployment.url, token="x")
    with pytest.raises(glance_exc.HTTPConflict, match=f"An image with identifier {image_id} already exists"):
        glance.images.create(id=image_id, name="again", disk_format="raw", container_format="bare")
    conn = openstack.connect(auth_type="none", auth={"endpoint": deployment.url})
    with pytest.raises(sdk_exceptions.ConflictException, match=f"An image with identifier {image_id} already exists"):
        conn.image.create_image("again", id=image_id, disk_format="raw", container_format="bare", allow_duplicates=True)
    assert requests.get(f"{deployment.url}/v2/images?name=again").json()["images"] == []


def test_max_rows_purges_the_oldest_first(deployment):
    purged(deployment, "--age-in-days", "0")  # what earlier tests left
    images = [deleted_image(deployment.url) for _ in range(3)]
    for days, image_id in zip((50, 40, 35), images):
        age(deployment, image_id, days)
    assert purged(deployment, "--max-rows", "2")["images"] == 2
    registry = SQLRegistry(url=deployment.database)
    try:
        assert registry.get_image(images[2], include_deleted=True).status.value == "deleted"
        assert purged(deployment, "--max-rows", "2")["images"] == 1
        with pytest.raises(ImageNotFound):
            registry.get_image(images[2], include_deleted=True)
    finally:
        registry.close()


def test_the_table_says_what_went(deployment):
    purged(deployment, "--age-in-days", "0")
    image_id = deleted_image(deployment.url)
    age(deployment, image_id, days=31)
    proc = purge_cli(config_files=deployment.config_files)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert " purged what was deleted before " in lines[0] and lines[0].endswith(" UTC")
    table = dict(line.split() for line in lines[1:9])
    assert table == {
        "TABLE": "ROWS",
        "images": "1",
        "image_properties": table["image_properties"],
        "image_tags": "1",
        "image_locations": "0",
        "image_members": "1",
        "cache_entries": "0",
        "tasks": "0",
    }
    assert lines[9] == "1 image id(s) kept as tombstones: they are never given to a new image"


def test_over_the_http_registry(deployment, make_registry, tmp_path):
    """``registry = http`` in the config: the command asks the registry service."""
    image_id = deleted_image(deployment.url)
    age(deployment, image_id, days=31)
    registry = make_registry(tmp_path, deployment.config_files).start()
    proc = purge_cli("--json", config_files=[*deployment.config_files, registry.client_config()])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["registry"] == registry.url
    assert result["removed"]["images"] >= 1
    conflict(deployment.url, image_id)


def test_another_purge_holding_the_lease_is_an_error(deployment):
    image_id = deleted_image(deployment.url)
    age(deployment, image_id, days=31)
    registry = SQLRegistry(url=deployment.database)
    try:
        assert registry.acquire_lease("purge", "elsewhere:1", 60)
        proc = purge_cli(config_files=deployment.config_files)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "abbild: error: another purge is running in this deployment" in proc.stderr
        assert registry.get_image(image_id, include_deleted=True)  # untouched
    finally:
        registry.release_lease("purge", "elsewhere:1")
        registry.close()
    assert purged(deployment)["images"] >= 1


# -- arguments, without a database ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--age-in-days", "-1"], "argument --age-in-days: -1 days: give 0 to 365000"),
        (["--age-in-days", "365001"], "argument --age-in-days: 365001 days: give 0 to 365000"),
        (["--age-in-days", "a week"], "argument --age-in-days: 'a week' is not a whole number"),
        (["--age-in-days", "1.5"], "argument --age-in-days: '1.5' is not a whole number"),
        (["--max-rows", "0"], "argument --max-rows: 0 rows: give 1 or more, or -1 for all"),
        (["--max-rows", "-2"], "argument --max-rows: -2 rows: give 1 or more, or -1 for all"),
        (["--max-rows", "all"], "argument --max-rows: 'all' is not a whole number"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(args, message, tmp_path):
    proc = purge_cli(*args, config_dir=str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == f"abbild db purge: error: {message}"
    assert "Traceback" not in proc.stderr


def test_glances_spelling_of_the_arguments_is_unknown(tmp_path):
    proc = purge_cli("--age_in_days", "3", config_dir=str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == "abbild: error: unrecognized arguments: --age_in_days 3"
    assert "Traceback" not in proc.stderr


def test_without_a_config_file_it_refuses(tmp_path):
    proc = purge_cli(config_dir=str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"abbild: error: {tmp_path}/abbild-api.conf does not exist" in proc.stderr


def test_it_purges_the_embedded_default_when_asked(tmp_path):
    data = tmp_path / "embedded"
    proc = purge_cli("--data-dir", str(data), "--json", config_dir=str(tmp_path / "nowhere"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["registry"] == f"sqlite:///{data}/abbild.sqlite"
    both = purge_cli("--data-dir", str(data), config_files=[str(data / "abbild-api.conf")])
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_fresh_id_is_still_free(deployment):
    image_id = str(uuid.uuid4())
    assert make_image(deployment.url, id=image_id) == image_id
