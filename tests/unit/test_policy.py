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
