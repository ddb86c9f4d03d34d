"""``auth_strategy = keystone`` without a Keystone: the http driver against the
registry app behind a stand-in for keystonemiddleware's auth_token that knows a few
tokens. The registry takes the caller from the user's token, never from the API
node; a service token alone reaches only uploads in progress. (With a real Keystone:
tests/functional/test_registry_keystone.py.)"""

from __future__ import annotations

import datetime
import threading
import types
import uuid
import wsgiref.simple_server

import pytest

from abbild.caller import acting_as, auth_token
from abbild.context import RequestContext
from abbild.errors import ConfigError, Forbidden, ImageNotFound, RegistryUnavailable
from abbild.image import Image, Location, Status
from abbild.registry import CacheEntry, ImageFilters, Viewer
from abbild.registry_client import HTTPRegistry
from abbild_registry.app import RegistryApp, load_conf
from abbild_registry.auth import Refused, check_bind, keystone_caller, keystone_middleware

# token -> (project, roles), as Keystone would answer for them
TOKENS = {
    "svc-token": ("service", ("service",)),
    "alice-token": ("p1", ("member", "reader")),
    "bob-token": ("p2", ("member", "reader")),
    "root-token": ("admins", ("admin", "member")),
}
CONF = types.SimpleNamespace(keystone_authtoken=types.SimpleNamespace(service_token_roles=["service"]))


def fake_auth_token(app):
    """What auth_token does to the environ: drop the identity headers a client sent,
    then describe the tokens it knows (``delay_auth_decision``: never refuses)."""

    def middleware(environ, start_response):
        for key in [
            k
            for k in environ
            if k.startswith(("HTTP_X_SERVICE_", "HTTP_X_IDENTITY_", "HTTP_X_ROLES", "HTTP_X_PROJECT_", "HTTP_X_USER_"))
        ]:
            if key != "HTTP_X_SERVICE_TOKEN":
                del environ[key]
        if "HTTP_X_SERVICE_TOKEN" in environ:
            service = TOKENS.get(environ["HTTP_X_SERVICE_TOKEN"])
            environ["HTTP_X_SERVICE_IDENTITY_STATUS"] = "Confirmed" if service else "Invalid"
            if service:
                environ["HTTP_X_SERVICE_ROLES"] = ",".join(service[1])
        user = TOKENS.get(environ.get("HTTP_X_AUTH_TOKEN"))
        environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed" if user else "Invalid"
        if user:
            environ["HTTP_X_PROJECT_ID"], environ["HTTP_X_ROLES"] = user[0], ",".join(user[1])
        return app(environ, start_response)

    return middleware


class FakeServiceSession:
    """The keystoneauth1 session of the API node's service user."""

    def __init__(self, token: str = "svc-token") -> None:
        self.token, self.invalidated = token, 0

    def get_auth_headers(self):
        return {"X-Auth-Token": self.token}

    def invalidate(self):
        self.invalidated += 1


class _Quiet(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def url(tmp_path):
    from abbild.db.registry import SQLRegistry

    registry = SQLRegistry(url=f"sqlite:///{tmp_path}/registry.db")
    registry.prepare()
    app = fake_auth_token(keystone_middleware(RegistryApp(registry), CONF))
    httpd = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()
    registry.close()


def client_for(url: str, session=None) -> HTTPRegistry:
    return HTTPRegistry(url=url, keystone=session or FakeServiceSession(), retries=0)


def as_user(token: str, project: str | None = None):
    """Bind *token*, with a viewer that claims whatever the caller likes."""
    return acting_as(Viewer(project, is_admin=True), token)


def _image(client, **fields) -> Image:
    with as_user("alice-token"):
        return client.create_image(Image(id=str(uuid.uuid4()), owner="p1", visibility="private", **fields))


def test_the_users_token_decides_not_the_viewer(url):
    client = client_for(url)
    image = _image(client)
    with as_user("bob-token", project="p1"):  # an admin of p1, says the API node
        with pytest.raises(ImageNotFound):
            client.get_image(image.id)
        assert client.list_images(ImageFilters(visibility="all"), [], 10, viewer=Viewer("p1", is_admin=True)) == []
        with pytest.raises(Forbidden):
            client.create_image(Image(id=str(uuid.uuid4()), owner="p1"))
    with as_user("alice-token"):
        assert client.get_image(image.id).id == image.id
        assert [i.id for i in client.list_images(ImageFilters(), [], 10)] == [image.id]
    with as_user("root-token"):
        assert client.get_image(image.id).id == image.id


def test_service_token_alone_carries_uploads_on_and_nothing_else(url):
    client = client_for(url)
    image = _image(client, disk_format="raw", container_format="bare")
    with pytest.raises(ImageNotFound):  # queued: not an upload in progress
        client.get_image(image.id)
    with as_user("alice-token"):
        client.update_image(image.id, lambda i: i.transition(Status.SAVING))
    assert [i.id for i in client.images_in_status("saving")] == [image.id]
    with pytest.raises(Forbidden):
        client.update_image(image.id, lambda i: setattr(i, "visibility", "public"))
    with pytest.raises(Forbidden):
        client.update_image(image.id, lambda i: setattr(i, "owner", "p2"))
    released = client.update_image(image.id, lambda i: i.transition(Status.QUEUED))
    assert released.status is Status.QUEUED
    for refused in (
        lambda: client.images_in_status("active"),
        lambda: client.list_members(image.id),
        lambda: client.list_images(ImageFilters(), [], 10),
        lambda: client.usage("p1"),
    ):
        with pytest.raises(RegistryUnavailable, match="acts for a user"):
            refused()


def test_service_token_alone_finishes_deletes_and_nothing_else(url):
    """Deleting the data of a pending_delete image again (background retries, start-up
    recovery) is a service job too; bringing the image back is not."""
    client = client_for(url)
    image = _image(client, disk_format="raw", container_format="bare")
    own = Location("local", f"file:///var/lib/abbild/images/{image.id}", 3)
    gone = Location("web", "https://example.com/mirror.img", 3)

    def activate(i: Image) -> None:
        i.size, i.checksum, i.locations = 3, "0" * 32, [own]
        i.transition(Status.ACTIVE)

    with as_user("alice-token"):
        client.update_image(image.id, lambda i: i.transition(Status.SAVING))
        client.update_image(image.id, activate)
        client.update_image(image.id, lambda i: i.locations.append(gone))
        client.update_image(image.id, lambda i: i.transition(Status.PENDING_DELETE))
    assert [i.id for i in client.images_in_status("pending_delete")] == [image.id]
    with pytest.raises(Forbidden):
        client.update_image(image.id, lambda i: i.transition(Status.ACTIVE))
    with pytest.raises(Forbidden):
        client.update_image(image.id, lambda i: i.locations.append(own))
    assert client.update_image(image.id, lambda i: i.locations.remove(gone)).locations == [own]

    def deleted(i: Image) -> None:
        i.locations = []
        i.transition(Status.DELETED)

    assert client.update_image(image.id, deleted).status is Status.DELETED


def test_service_token_alone_keeps_the_cache_index(url):
    """Cache work runs outside any user's request: filling, pruning, cleaning."""
    client = client_for(url)
    node = "http://api-a.example:9292"
    stored = client.cache_put(CacheEntry(node, "i1", "cached", size=3, checksum="0" * 32))
    client.cache_hit(node, "i1")
    assert [(e.image_id, e.hits) for e in client.cache_entries(node)] == [("i1", 1)]
    assert client.cache_entries(image_id="i1")[0].last_modified == stored.last_modified
    assert client.cache_remove(node, "i1") is True
    assert client.cache_entries() == []


def test_cache_index_is_not_for_users(url, monkeypatch):
    """Only an administrator's token reaches it, besides the service token alone."""
    client = client_for(url)
    client.cache_put(CacheEntry("http://api-a.example:9292", "i1"))
    real = client._request
    # Send the user's token along, as a call made for the user would.
    monkeypatch.setattr(client, "_request", lambda *a, as_service=False, **kw: real(*a, **kw))
    for token in ("alice-token", "svc-token"):  # a user; a service user's own token
        with as_user(token):
            with pytest.raises(Forbidden, match="cache index is for the service and administrators only"):
                client.cache_entries()
            with pytest.raises(Forbidden):
                client.cache_put(CacheEntry("http://api-a.example:9292", "i2"))
            with pytest.raises(Forbidden):
                client.cache_hit("http://api-a.example:9292", "i1")
            with pytest.raises(Forbidden):
                client.cache_remove("http://api-a.example:9292", "i1")
    with as_user("root-token"):
        assert [(e.image_id, e.hits) for e in client.cache_entries()] == [("i1", 0)]


def test_service_token_alone_purges_and_users_may_not(url, monkeypatch):
    """The periodic purge of an API node runs outside any user's request."""
    client = client_for(url)
    image = _image(client)
    with as_user("alice-token"):
        client.update_image(image.id, lambda i: i.transition(Status.DELETED))
    assert client.purge(datetime.datetime(2999, 1, 1))["images"] == 1
    real = client._request
    monkeypatch.setattr(client, "_request", lambda *a, as_service=False, **kw: real(*a, **kw))
    for token in ("alice-token", "svc-token"):
        with as_user(token), pytest.raises(Forbidden, match="Purging deleted images is for the service"):
            client.purge(datetime.datetime(2999, 1, 1))
    with as_user("root-token"):
        assert client.purge(datetime.datetime(2999, 1, 1))["images"] == 0


def test_cache_calls_go_without_the_users_token(url, monkeypatch):
    client = client_for(url)
    sent = []
    real = client.session.request
    monkeypatch.setattr(client.session, "request", lambda *a, **kw: sent.append(kw["headers"]) or real(*a, **kw))
    with as_user("alice-token"):  # counting a hit inside alice's download
        client.cache_hit("http://api-a.example:9292", "i1")
        client.cache_entries()
    assert [set(headers) - {"Content-Type"} for headers in sent] == [{"X-Service-Token"}] * 2


def test_images_in_status_goes_without_the_users_token(url, monkeypatch):
    client = client_for(url)
    sent = []
    real = client.session.request
    monkeypatch.setattr(client.session, "request", lambda *a, **kw: sent.append(kw["headers"]) or real(*a, **kw))
    with as_user("alice-token"):
        client.images_in_status("saving")
        client.list_images(ImageFilters(), [], 10)
    assert sent[0] == {"X-Service-Token": "svc-token"}
    assert sent[1] == {"X-Service-Token": "svc-token", "X-Auth-Token": "alice-token"}  # no caller, no signature


def test_a_refused_service_token_is_unavailable_and_renewed(url):
    session = FakeServiceSession("revoked-token")
    with as_user("alice-token"), pytest.raises(RegistryUnavailable, match="refused our tokens"):
        client_for(url, session).get_image("x")
    assert session.invalidated == 1


def _environ(service="Confirmed", service_roles="service", user_token="t", user="Confirmed", **more) -> dict:
    environ = {
        "HTTP_X_SERVICE_IDENTITY_STATUS": service,
        "HTTP_X_SERVICE_ROLES": service_roles,
        "HTTP_X_AUTH_TOKEN": user_token,
        "HTTP_X_IDENTITY_STATUS": user,
        **more,
    }
    return {k: v for k, v in environ.items() if v is not None}


@pytest.mark.parametrize(
    "environ, status",
    [
        (_environ(service=None), "401"),  # no service token
        (_environ(service="Invalid"), "401"),
        (_environ(service_roles="member,reader"), "403"),
        (_environ(user="Invalid"), "401"),
    ],
)
def test_keystone_caller_refuses(environ, status):
    with pytest.raises(Refused) as refused:
        keystone_caller(environ, ["service"])
    assert refused.value.status.startswith(status)


def test_keystone_caller_is_the_tokens_user_or_the_service_jobs():
    caller = keystone_caller(
        _environ(HTTP_X_PROJECT_ID="p1", HTTP_X_ROLES="Admin,member", HTTP_X_USER_ID="u1"), ["service"]
    )
    assert caller.viewer == Viewer("p1", is_admin=True, user_id="u1", roles=("admin", "member"))
    jobs = keystone_caller(_environ(user_token=None, user="Invalid"), ["service"])
    assert jobs.jobs_only and not jobs.privileged


def test_keystone_may_listen_anywhere(tmp_path):
    conf = tmp_path / "r.conf"
    conf.write_text("[registry_server]\nauth_strategy = keystone\n")
    check_bind("0.0.0.0", load_conf([str(conf)]))


def test_keystone_client_needs_its_service_user(tmp_path):
    from abbild import config

    conf = tmp_path / "api.conf"
    conf.write_text("[registry_client]\nauth_strategy = keystone\nauth_url = http://127.0.0.1:5000/v3\n")
    with pytest.raises(ConfigError, match="username, password"):
        HTTPRegistry(config.load([str(conf)]))


def test_the_token_stays_out_of_repr_and_other_threads():
    assert "secret-token" not in repr(RequestContext(project_id="p1", auth_token="secret-token"))
    seen = []
    with acting_as(Viewer("p1"), "secret-token"):
        assert auth_token() == "secret-token"
        thread = threading.Thread(target=lambda: seen.append(auth_token()))  # a background job
        thread.start()
        thread.join()
    assert seen == [None] and auth_token() is None


def test_context_filter_keeps_the_confirmed_token():
    from abbild_paste.context import context_filter_factory

    seen = []
    app = context_filter_factory({})(lambda environ, start_response: seen.append(environ["abbild.context"]) or [])
    app({"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_PROJECT_ID": "p1", "HTTP_X_AUTH_TOKEN": "tok"}, None)
    assert seen[0].auth_token == "tok"


def test_the_scrubber_works_with_the_service_token_alone(url, tmp_path):
    """A user's delayed delete, then the real scrubber through the registry with the
    service token alone: it claims the image and deletes its data; a restore needs
    more than that token, and a user's token cannot bring the image back either."""
    from oslo_config import cfg

    from abbild import opts
    from abbild.memory import MemoryDriver
    from abbild.plugins import get_plugin_manager
    from abbild.scrubber import Scrubber
    from abbild.service import ImageService
    from abbild.stores import StoreManager

    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    conf.set_override("enabled_backends", {"mem": "memory"})
    conf.set_override("default_backend", "mem")
    conf.set_override("scrub_time", 0)
    client = client_for(url)
    service = ImageService(conf, client, StoreManager(conf, drivers={"memory": MemoryDriver}), get_plugin_manager())
    image = _image(client, disk_format="raw", container_format="bare")
    stored = service.stores["mem"].driver.put(image.id, [b"abc"], 3)
    own = Location("mem", stored.uri, 3)

    def activate(i: Image) -> None:
        i.size, i.checksum, i.locations = 3, "0" * 32, [own]
        i.transition(Status.ACTIVE)

    def delayed_delete(i: Image) -> None:
        i.transition(Status.PENDING_DELETE)
        i.deleted_at = datetime.datetime(2030, 1, 1)

    with as_user("alice-token"):
        client.update_image(image.id, lambda i: i.transition(Status.SAVING))
        client.update_image(image.id, activate)
        client.update_image(image.id, delayed_delete)
        with pytest.raises(Forbidden, match="waits for the scrubber"):
            client.update_image(image.id, lambda i: i.transition(Status.ACTIVE))
    scrubber = Scrubber(service)
    with pytest.raises(Forbidden, match="may only go from 'pending_delete'"):
        scrubber.restore(image.id)
    client.update_image(image.id, lambda i: setattr(i, "deleted_at", datetime.datetime(2000, 1, 1)))
    assert scrubber.run()["deleted"] == 1
    assert service.stores["mem"].driver._objects == {}
    with pytest.raises(ImageNotFound):  # deleted: no service job's any more
        client.get_image(image.id, include_deleted=True)


# -- tasks --------------------------------------------------------------------------------


def _task(client, token="alice-token", owner="p1", **fields):
    from abbild.tasks import Task

    with as_user(token):
        return client.create_task(Task(id=str(uuid.uuid4()), type="import", owner=owner, **fields))


def test_users_write_and_read_only_their_projects_tasks(url):
    from abbild.errors import InvalidTransition, TaskNotFound
    from abbild.tasks import Task, TaskFilters, TaskStatus

    client = client_for(url)
    image = _image(client)
    task = _task(client, image_id=image.id, input={"import_from": "https://example.com/a.img"})
    with as_user("bob-token", project="p1"):  # an admin of p1, says the API node
        with pytest.raises(TaskNotFound):
            client.get_task(task.id)
        with pytest.raises(TaskNotFound):
            client.update_task(task.id, lambda t: setattr(t, "message", "mine"))
        assert client.list_tasks(TaskFilters()) == []
        assert client.list_tasks(TaskFilters(owner="p1")) == []
        with pytest.raises(Forbidden, match="own project"):
            client.create_task(Task(id=str(uuid.uuid4()), type="import", owner="p1"))
    with pytest.raises(Forbidden, match="'pending'"):
        _task(client, status=TaskStatus.SUCCESS)
    with as_user("alice-token"):
        assert [t.id for t in client.list_tasks(TaskFilters())] == [task.id]
        assert [t.id for t in client.tasks_of_image(image.id)] == [task.id]
        for change in (
            lambda t: setattr(t, "owner", "p2"),
            lambda t: t.input.update(import_from="file:///etc/shadow"),
            lambda t: setattr(t, "expires_at", datetime.datetime(2999, 1, 1)),
        ):
            with pytest.raises(Forbidden, match="read-only"):
                client.update_task(task.id, change)
        running = client.update_task(task.id, lambda t: t.transition(TaskStatus.PROCESSING))
        with pytest.raises(InvalidTransition):
            client.update_task(task.id, lambda t: setattr(t, "status", TaskStatus.PENDING))
        with pytest.raises(Forbidden, match="set once"):
            client.update_task(task.id, lambda t: setattr(t, "image_id", str(uuid.uuid4())))

        def succeed(t):
            t.transition(TaskStatus.SUCCESS)
            t.result = {"image_id": image.id}

        done = client.update_task(task.id, succeed)
        assert done.version == running.version + 1 and done.expires_at is not None
    other = _task(client, token="bob-token", owner="p2")
    with as_user("root-token"):
        assert {t.id for t in client.list_tasks(TaskFilters())} == {task.id, other.id}
        assert [t.id for t in client.list_tasks(TaskFilters(owner="p2"))] == [other.id]
    with as_user("bob-token"):  # bob sees alice's private image no more than its tasks
        with pytest.raises(ImageNotFound):
            client.tasks_of_image(image.id)


def test_tasks_of_a_public_image_are_its_projects(url):
    client = client_for(url)
    image = _image(client)
    with as_user("root-token"):  # publicize_image is for administrators
        client.update_image(image.id, lambda i: setattr(i, "visibility", "public"))
    task = _task(client, image_id=image.id)
    with as_user("bob-token"):
        assert client.tasks_of_image(image.id) == []
    with as_user("alice-token"):
        assert [t.id for t in client.tasks_of_image(image.id)] == [task.id]


def test_service_token_alone_carries_running_tasks_on(url):
    """A background import goes on after the user's request ended: it reads and writes
    its task while that is pending or processing, and nothing else."""
    from abbild.errors import TaskNotFound
    from abbild.tasks import Task, TaskFilters, TaskStatus

    client = client_for(url)
    task = _task(client)
    assert client.update_task(task.id, lambda t: t.transition(TaskStatus.PROCESSING)).status is TaskStatus.PROCESSING
    with pytest.raises(Forbidden, match="read-only"):
        client.update_task(task.id, lambda t: setattr(t, "owner", "p2"))
    client.update_task(task.id, lambda t: t.transition(TaskStatus.FAILURE))
    with pytest.raises(TaskNotFound):  # ended: no longer work in progress
        client.get_task(task.id)
    for refused in (
        lambda: client.list_tasks(TaskFilters()),
        lambda: client.create_task(Task(id=str(uuid.uuid4()), type="import", owner="p1")),
    ):
        with pytest.raises(RegistryUnavailable, match="acts for a user"):
            refused()
    with as_user("alice-token"):
        assert client.get_task(task.id).status is TaskStatus.FAILURE


# -- metadata definitions -------------------------------------------------------------------


def _namespace(client, name, token="alice-token", owner="p1", visibility="private", **fields):
    from abbild.metadefs import Namespace

    with as_user(token):
        return client.create_namespace(Namespace(namespace=name, owner=owner, visibility=visibility, **fields))


def test_users_create_namespaces_of_their_own_project(url):
    from abbild.metadefs import Namespace

    client = client_for(url)
    assert _namespace(client, "OS::Alice").owner == "p1"
    for token, owner in (("alice-token", "p2"), ("alice-token", None), ("svc-token", "p1"), ("bob-token", "p1")):
        with as_user(token, project="p1"), pytest.raises(Forbidden, match="not permitted to create namespace"):
            client.create_namespace(Namespace(namespace="OS::Forged", owner=owner))
    assert _namespace(client, "OS::Bobs", token="root-token", owner="p2").owner == "p2"
    assert _namespace(client, "OS::Nobodys", token="root-token", owner=None).owner is None


def test_users_change_and_delete_only_their_projects_namespaces(url):
    from abbild.errors import MetadefNotFound
    from abbild.metadefs import MetadefTag, NamespaceFilters

    client = client_for(url)
    _namespace(client, "OS::Private")
    _namespace(client, "OS::Public", visibility="public")
    _namespace(client, "OS::Nobodys", token="root-token", owner=None, visibility="public")
    with as_user("bob-token", project="p1"):  # an admin of p1, says the API node
        with pytest.raises(MetadefNotFound):
            client.get_namespace("OS::Private")
        with pytest.raises(MetadefNotFound):
            client.update_namespace("OS::Private", lambda n: setattr(n, "description", "bob's"))
        with pytest.raises(MetadefNotFound):
            client.delete_namespace("OS::Private")
        visible = client.list_namespaces(NamespaceFilters(), viewer=Viewer("p1", is_admin=True))
        assert {n.namespace for n in visible} == {"OS::Public", "OS::Nobodys"}
        for name in ("OS::Public", "OS::Nobodys"):
            with pytest.raises(Forbidden, match=f"not permitted to change namespace {name}"):
                client.update_namespace(name, lambda n: n.tags.append(MetadefTag("bob's")))
            with pytest.raises(Forbidden, match=f"not permitted to delete namespace {name}"):
                client.delete_namespace(name)
    with as_user("svc-token"):  # the role service writes no metadefs
        with pytest.raises(Forbidden):
            client.update_namespace("OS::Public", lambda n: setattr(n, "description", "service's"))
    with as_user("alice-token"):
        with pytest.raises(Forbidden, match="not permitted to change namespace OS::Nobodys"):
            client.update_namespace("OS::Nobodys", lambda n: setattr(n, "description", "alice's"))
        with pytest.raises(Forbidden, match="only administrators give a namespace to another project"):
            client.update_namespace("OS::Public", lambda n: setattr(n, "owner", "p2"))
        renamed = client.get_namespace("OS::Private")
        renamed.namespace, renamed.description = "OS::Renamed", "alice's"
        assert client.save_namespace("OS::Private", renamed).namespace == "OS::Renamed"
        client.delete_namespace("OS::Renamed")
    with as_user("root-token"):
        assert client.update_namespace("OS::Public", lambda n: setattr(n, "owner", "p2")).owner == "p2"
        client.delete_namespace("OS::Nobodys")
        assert [n.namespace for n in client.list_namespaces(NamespaceFilters())] == ["OS::Public"]


def test_service_token_alone_reads_metadefs_and_writes_none(url):
    from abbild.metadefs import Association, Namespace, NamespaceFilters

    client = client_for(url)
    created = _namespace(client, "OS::Private", associations=[Association("OS::Custom::Thing")])
    assert client.get_namespace("OS::Private") == created  # no user's token
    assert [n.namespace for n in client.list_namespaces(NamespaceFilters())] == ["OS::Private"]
    assert "OS::Custom::Thing" in {r.name for r in client.list_resource_types()}
    for refused in (
        lambda: client.create_namespace(Namespace(namespace="OS::Jobs")),
        lambda: client.update_namespace("OS::Private", lambda n: setattr(n, "description", "service's")),
        lambda: client.delete_namespace("OS::Private"),
        lambda: client.delete_resource_type("OS::Custom::Thing"),
    ):
        with pytest.raises(RegistryUnavailable, match="acts for a user"):
            refused()
    with as_user("alice-token"):
        assert client.get_namespace("OS::Private") == created  # untouched


def test_the_viewer_narrows_the_tokens_view_and_never_widens_it(url):
    """validate_image_properties lists what the image's owner sees, also when an
    administrator changes the image."""
    from abbild.metadefs import NamespaceFilters

    client = client_for(url)
    _namespace(client, "OS::Alices")
    _namespace(client, "OS::Bobs", token="bob-token", owner="p2")
    _namespace(client, "OS::Public", visibility="public")

    def names(token, viewer):
        with as_user(token):
            return {n.namespace for n in client.list_namespaces(NamespaceFilters(), viewer=viewer)}

    assert names("root-token", Viewer("p1")) == {"OS::Alices", "OS::Public"}
    assert names("root-token", Viewer("p2")) == {"OS::Bobs", "OS::Public"}
    assert names("bob-token", Viewer("p1")) == {"OS::Public"}
    assert names("bob-token", Viewer("p1", is_admin=True)) == {"OS::Bobs", "OS::Public"}


def test_resource_types_are_removed_by_administrators_only(url):
    from abbild.metadefs import Association

    client = client_for(url)
    _namespace(client, "OS::Alice", associations=[Association("OS::Custom::Thing")])
    with as_user("alice-token"):
        client.update_namespace("OS::Alice", lambda n: n.associations.clear())
        with pytest.raises(Forbidden, match="Only administrators may remove resource type OS::Custom::Thing"):
            client.delete_resource_type("OS::Custom::Thing")
    with as_user("root-token"):
        client.delete_resource_type("OS::Custom::Thing")
        assert "OS::Custom::Thing" not in {r.name for r in client.list_resource_types()}
