"""Lifecycle notifications go through pluggy (so ``ABBILD_TRACE_HOOKS=1`` traces them)
and keep every plugin isolated from the others."""

import logging
import types
import uuid

import pytest

from abbild import hookimpl
from abbild.image import Image
from abbild.plugins import get_plugin_manager, notify
from abbild.registry import Viewer

NOTIFICATIONS = sorted(
    n
    for n in get_plugin_manager(load_entrypoints=False).hook.__dict__
    if n.startswith(("abbild_image_", "abbild_task_"))
)
ARGS = {
    "image": types.SimpleNamespace(id="i"),
    "task": types.SimpleNamespace(id="t"),
    "location": object(),
    "store": object(),
    "member": object(),
    "viewer": object(),
    "bytes_sent": 0,
    "error": RuntimeError("upload"),
}


def _fail():
    raise RuntimeError("a broken notifier")


# An implementation may take none of its hook's arguments (pluggy passes what it names).
class FailsEverywhere:
    def __init__(self):
        for name in NOTIFICATIONS:
            setattr(self, name, hookimpl(specname=name)(lambda: _fail()))


class Records:
    def __init__(self):
        self.seen = []
        for name in NOTIFICATIONS:
            setattr(self, name, hookimpl(specname=name)(lambda name=name: self.seen.append(name)))


@pytest.fixture
def traced(monkeypatch):
    monkeypatch.setenv("ABBILD_TRACE_HOOKS", "1")


def _spec_args(pm, name):
    return {arg: ARGS[arg] for arg in getattr(pm.hook, name).spec.argnames}


def test_image_and_task_events_are_notifications():
    assert len(NOTIFICATIONS) == 16 and {"abbild_image_upload_failed", "abbild_task_failed"} <= set(NOTIFICATIONS)


def test_every_notification_is_traced_and_a_failing_plugin_stops_no_other(traced, capsys, caplog):
    pm = get_plugin_manager(load_entrypoints=False)
    records = Records()
    pm.register(records, name="records")
    pm.register(FailsEverywhere(), name="fails-everywhere")  # pluggy calls the plugin registered last first
    for name in NOTIFICATIONS:
        notify(pm, name, **_spec_args(pm, name))
    trace = capsys.readouterr().err
    for name in NOTIFICATIONS:
        assert f"{name} [hook]" in trace and f"finish {name} --> [] [hook]" in trace
    assert records.seen == NOTIFICATIONS
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert failures == [f"plugin fails-everywhere failed in {name}" for name in NOTIFICATIONS]


def test_a_notification_of_the_service_is_traced(traced, request, capsys):
    """The service's own calls (here: a created image, with the fixture's broken plugin)
    go through pluggy too."""
    service = request.getfixturevalue("service")  # after the environment says to trace
    service.create(Image(id=str(uuid.uuid4()), disk_format="raw", container_format="bare"), Viewer(is_admin=True))
    assert "abbild_image_created [hook]" in capsys.readouterr().err
    assert service.recorder.events[-1][0] == "created"


def test_other_hooks_keep_their_errors():
    """Only notifications are isolated: a plugin failing to choose a store fails the upload."""
    pm = get_plugin_manager(load_entrypoints=False)

    class Fails:
        @hookimpl
        def abbild_select_store(self, image, stores):
            raise RuntimeError("no choice")

    pm.register(Fails())
    with pytest.raises(RuntimeError, match="no choice"):
        pm.hook.abbild_select_store(image=None, stores={"a": None})
