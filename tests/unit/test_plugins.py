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
    conf = types.SimpleNamespace(default_backend="local")
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
