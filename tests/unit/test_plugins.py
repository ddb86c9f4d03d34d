"""One test per hook (tests/test_meta.py checks that each hook has one)."""

import types
import uuid

import pytest

from abbild import hookimpl
from abbild.errors import SizeMismatch
from abbild.image import Image
from abbild.plugins import get_plugin_manager
from abbild.registry import Viewer

ADMIN = Viewer(is_admin=True)


class Calls:
    def __init__(self, *names):
        self.seen = []
        for name in names:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def impl(image, **kw):
            self.seen.append((name, image.status.value))

        impl.__name__ = name
        return hookimpl(impl)


def _plugin(service, *names):
    calls = Calls(*names)
    service.plugins.register(calls)
    return calls


def _image(service):
    return service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), ADMIN)


def test_hook_abbild_configure():
    pm = get_plugin_manager(load_entrypoints=False)
    signing = types.SimpleNamespace(
        certificate_source="directory", certificate_dir=None, enable_certificate_validation=False
    )
    image_format = types.SimpleNamespace(
        require_image_format_match=True, vmdk_allowed_types=["monolithicSparse"], gpt_safety_checks_nonfatal=["mbr"]
    )
    conf = types.SimpleNamespace(default_backend="local", image_signature=signing, image_format=image_format)
    pm.hook.abbild_configure.call_historic(kwargs={"conf": conf})
    seen = []

    class Late:
        @hookimpl
        def abbild_configure(self, conf):
            seen.append(conf)

    pm.register(Late())  # registered after the call: historic hooks still reach it
    assert seen == [conf]


def test_hook_abbild_select_store(service):
    class PickOther:
        @hookimpl
        def abbild_select_store(self, image, stores):
            assert set(stores) == {"mem", "other"}
            return "other"

    service.plugins.register(PickOther())
    image = _image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    assert service.registry.get_image(image.id).locations[0].store == "other"


def test_hook_abbild_image_created(service):
    calls = _plugin(service, "abbild_image_created")
    _image(service)
    assert calls.seen == [("abbild_image_created", "queued")]


def test_hook_abbild_image_updated(service):
    calls = _plugin(service, "abbild_image_updated")
    image = _image(service)
    service.update(image.id, lambda i: setattr(i, "name", "new"), ADMIN)
    assert calls.seen == [("abbild_image_updated", "queued")]


def test_hook_abbild_image_uploaded(service):
    calls = _plugin(service, "abbild_image_uploaded")
    image = _image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    assert calls.seen == [("abbild_image_uploaded", "active")]


def test_hook_abbild_image_upload_failed(service):
    calls = _plugin(service, "abbild_image_upload_failed")
    image = _image(service)
    with pytest.raises(SizeMismatch):  # two bytes where one was declared
        service.uploads.upload(image.id, [b"xx"], declared_size=1, viewer=ADMIN)
    assert calls.seen == [("abbild_image_upload_failed", "queued")]


def test_hook_abbild_image_activated(service):
    calls = _plugin(service, "abbild_image_activated")
    image = _image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    service.set_active(image.id, False, ADMIN)
    service.set_active(image.id, True, ADMIN)
    service.set_active(image.id, True, ADMIN)  # already active: no event
    assert calls.seen == [("abbild_image_activated", "active")] * 2


def test_hook_abbild_image_deactivated(service):
    calls = _plugin(service, "abbild_image_deactivated")
    image = _image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN)
    service.set_active(image.id, False, ADMIN)
    service.set_active(image.id, False, ADMIN)
    assert calls.seen == [("abbild_image_deactivated", "deactivated")]


def test_hook_abbild_image_deleted(service):
    calls = _plugin(service, "abbild_image_deleted")
    image = _image(service)
    service.deletes.delete(image.id, ADMIN)
    assert calls.seen == [("abbild_image_deleted", "deleted")]


def _shared_image(service):
    image = service.create(
        Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare", owner="owner"), ADMIN
    )
    return image


def test_hook_abbild_image_member_created(service):
    calls = _plugin(service, "abbild_image_member_created")
    image = _shared_image(service)
    service.add_member(image.id, "friend", ADMIN)
    assert calls.seen == [("abbild_image_member_created", "queued")]


def test_hook_abbild_image_member_updated(service):
    seen = []

    class Updated:
        @hookimpl
        def abbild_image_member_updated(self, image, member):
            seen.append((image.id, member.member_id, member.status))

    service.plugins.register(Updated())
    image = _shared_image(service)
    service.add_member(image.id, "friend", ADMIN)
    service.set_member_status(image.id, "friend", "accepted", ADMIN)
    assert seen == [(image.id, "friend", "accepted")]


def test_hook_abbild_image_member_deleted(service):
    seen = []

    class Deleted:
        @hookimpl
        def abbild_image_member_deleted(self, image, member):
            seen.append((image.id, member.member_id, member.status, member.created_at is not None))

    service.plugins.register(Deleted())
    image = _shared_image(service)
    service.add_member(image.id, "friend", ADMIN)
    service.delete_member(image.id, "friend", ADMIN)
    assert seen == [(image.id, "friend", "pending", True)]  # the membership as it was


def test_hook_abbild_image_preparing(service):
    seen = []

    class Preparing:
        @hookimpl
        def abbild_image_preparing(self, image, store):
            seen.append((image.status.value, store.name, service.registry.get_image(image.id).status.value))

    service.plugins.register(Preparing())
    image = _image(service)
    service.uploads.upload(image.id, [b"x"], declared_size=1, viewer=ADMIN, store_name="other")
    assert seen == [("saving", "other", "saving")]  # the image is claimed, no byte written yet


def _download(service, image_id, **environ):
    """GET .../file through the API application, as *environ* says (a server's
    ``wsgi.file_wrapper``): the response's body iterable, not yet iterated."""
    import webob

    from abbild.context import ENVIRON_KEY, RequestContext
    from abbild_api.app import Application

    req = webob.Request.blank(f"/v2/images/{image_id}/file", environ=environ)
    req.environ[ENVIRON_KEY] = RequestContext(project_id="viewer-project", user_id="viewer-user", is_admin=True)
    return req.get_response(Application(service)).app_iter


def test_hook_abbild_image_sent(service):
    seen = []

    class Sent:
        @hookimpl
        def abbild_image_sent(self, image, bytes_sent, viewer, error):
            seen.append((image.id, bytes_sent, viewer.user_id, type(error).__name__ if error else None))

    service.plugins.register(Sent())
    service.conf.set_override("image_size_cap", 3 << 20)
    data = bytes(range(256)) * (10 << 10)  # 2.5 MiB: three chunks on their way out
    image = _image(service)
    service.uploads.upload(image.id, [data], declared_size=len(data), viewer=ADMIN)
    body = _download(service, image.id)
    assert b"".join(body) == data and seen == []  # only once the server closed it
    body.close()
    cut = _download(service, image.id)
    next(iter(cut))  # the client went away after the first chunk: the server closes the response
    cut.close()
    assert seen == [(image.id, len(data), "viewer-user", None), (image.id, 1 << 20, "viewer-user", "DownloadCutShort")]
