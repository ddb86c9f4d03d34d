"""The policy: Glance's defaults, an operator's policy file, anonymous callers."""

import uuid

import pytest

from abbild.errors import Forbidden, ImageNotFound
from abbild.image import Image
from abbild.policy import RULES, Policy
from abbild.registry import ImageFilters, Viewer

OWNER = Viewer(project_id="owner", roles=("member", "reader"))
READER = Viewer(project_id="owner", roles=("reader",))
STRANGER = Viewer(project_id="stranger", roles=("member", "reader"))
ANONYMOUS = Viewer(anonymous=True)


def new_image(service, **kw):
    return service.create(Image(id=str(uuid.uuid4()), owner="owner", **kw), OWNER)


def test_defaults_follow_glance():
    assert RULES["publicize_image"][0] == "role:admin"
    assert RULES["stores_info_detail"][0] == "role:admin or role:service"


def test_policy_file_overrides_a_default(service, tmp_path):
    image = new_image(service)
    with pytest.raises(Forbidden, match="publicize_image"):
        service.update(image.id, lambda i: setattr(i, "visibility", "public"), OWNER)
    (tmp_path / "policy.yaml").write_text('"publicize_image": "role:member"\n')
    service.conf.set_override("policy_file", str(tmp_path / "policy.yaml"), group="oslo_policy")
    service.policy = Policy(service.conf)
    service.update(image.id, lambda i: setattr(i, "visibility", "public"), OWNER)
    assert service.registry.get_image(image.id).visibility == "public"


def test_a_caller_without_reader_role_does_not_learn_the_image_exists(service):
    image = new_image(service)
    no_roles = Viewer(project_id="owner", roles=())
    with pytest.raises(ImageNotFound):
        service.get(image.id, no_roles)
    with pytest.raises(Forbidden):  # may read it, may not change it
        service.update(image.id, lambda i: None, READER)
    with pytest.raises(ImageNotFound):  # may not even read it
        service.update(image.id, lambda i: None, STRANGER)


def test_anonymous_reads_public_images_only_and_writes_nothing(service):
    public = service.create(Image(id=str(uuid.uuid4()), owner="owner", visibility="public"), Viewer(is_admin=True))
    shared = new_image(service)
    assert service.get(public.id, ANONYMOUS).id == public.id
    with pytest.raises(ImageNotFound):
        service.get(shared.id, ANONYMOUS)
    assert [i.id for i in service.list(ImageFilters(), [], 10, None, ANONYMOUS)] == [public.id]
    with pytest.raises(Forbidden):
        service.update(public.id, lambda i: None, ANONYMOUS)
    with pytest.raises(Forbidden):
        service.create(Image(id=str(uuid.uuid4())), ANONYMOUS)
    with pytest.raises(Forbidden):
        service.usage(ANONYMOUS)


def _policy_in(directory, policy_yaml: str | None = None) -> Policy:
    """A Policy of a configuration in *directory*, where oslo.policy finds policy.yaml."""
    from abbild import config

    (directory / "abbild-api.conf").write_text("[DEFAULT]\n")
    if policy_yaml is not None:
        (directory / "policy.yaml").write_text(policy_yaml)
    return Policy(config.load([str(directory / "abbild-api.conf")]))


def test_a_policy_file_that_appears_or_changes_takes_effect_without_a_restart(tmp_path, monkeypatch):
    import abbild.policy

    monkeypatch.setattr(abbild.policy, "RECHECK_SECONDS", 0)
    policy = _policy_in(tmp_path)
    target = {"project_id": "owner"}
    assert not policy.allows("publicize_image", OWNER, target)
    assert not policy.allows("publicize_image", OWNER, target)  # answered from memory now
    (tmp_path / "policy.yaml").write_text('"publicize_image": "role:member"\n')
    assert policy.allows("publicize_image", OWNER, target)
    (tmp_path / "policy.yaml").write_text('"publicize_image": "role:nobody-has-this"\n')
    assert not policy.allows("publicize_image", OWNER, target)
    (tmp_path / "policy.yaml").unlink()
    assert not policy.allows("publicize_image", OWNER, target)
    assert policy.allows("publicize_image", Viewer(is_admin=True), target)


def test_a_file_in_a_policy_dir_that_appears_or_changes_takes_effect_without_a_restart(tmp_path, monkeypatch):
    import abbild.policy

    monkeypatch.setattr(abbild.policy, "RECHECK_SECONDS", 0)
    policy = _policy_in(tmp_path)
    target = {"project_id": "owner"}
    assert not policy.allows("publicize_image", OWNER, target)
    (tmp_path / "policy.d").mkdir()
    (tmp_path / "policy.d" / "50-publish.yaml").write_text('"publicize_image": "role:member"\n')
    assert policy.allows("publicize_image", OWNER, target)
    (tmp_path / "policy.d" / "50-publish.yaml").write_text('"publicize_image": "role:nobody-has-this"\n')
    assert not policy.allows("publicize_image", OWNER, target)


def test_a_changed_policy_file_takes_effect_within_the_recheck_interval(tmp_path, monkeypatch):
    import abbild.policy

    clock = [1000.0]
    monkeypatch.setattr(abbild.policy.time, "monotonic", lambda: clock[0])
    policy = _policy_in(tmp_path, '"publicize_image": "role:member"\n')
    assert policy.allows("publicize_image", OWNER, {"project_id": "owner"})
    (tmp_path / "policy.yaml").write_text('"publicize_image": "role:admin"\n')
    clock[0] += abbild.policy.RECHECK_SECONDS + 0.01
    assert not policy.allows("publicize_image", OWNER, {"project_id": "owner"})


def test_remembered_answers_belong_to_their_configuration(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    opened = _policy_in(tmp_path / "a", '"get_images": "@"\n')
    default = _policy_in(tmp_path / "b")
    nobody = Viewer(project_id="p", roles=())
    for _ in range(2):
        assert opened.allows("get_images", nobody, {"project_id": "p"})
        assert not default.allows("get_images", nobody, {"project_id": "p"})


def test_answers_depend_on_the_whole_question(tmp_path):
    policy = _policy_in(tmp_path)
    for _ in range(2):
        assert policy.allows("modify_image", OWNER, {"project_id": "owner"})
        assert not policy.allows("modify_image", OWNER, {"project_id": "other"})
        assert not policy.allows("modify_image", READER, {"project_id": "owner"})
        assert not policy.allows("modify_image", STRANGER, {"project_id": "owner"})
        assert not policy.allows("modify_image", OWNER, {})


def test_a_check_outside_oslo_policys_pure_ones_is_asked_every_time(tmp_path):
    from oslo_policy import _checks
    from oslo_policy import policy as oslo

    calls = []

    class Counting(oslo.Check):
        def __call__(self, target, creds, enforcer, current_rule=None):
            calls.append(target)
            return True

    oslo.register("counting-test", Counting)
    try:
        policy = _policy_in(tmp_path, '"get_images": "counting-test:x"\n')
        for _ in range(3):
            assert policy.allows("get_images", OWNER, {"project_id": "owner"})
        assert len(calls) == 3
    finally:  # oslo.policy has no public way to unregister a check
        _checks.registered_checks.pop("counting-test", None)
