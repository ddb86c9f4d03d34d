"""What an import step works on: the staged data of one image on its way from the
staging area to the stores (see the ``abbild_import_steps`` hook)."""

from __future__ import annotations

import dataclasses
import pathlib

from abbild.image import Image
from abbild.registry import Viewer


@dataclasses.dataclass
class StagedData:
    """The staged data of one import, as the steps pass it along.

    A step that rewrites the data (decompression, conversion) writes a new file in
    *workdir*, then sets :attr:`path` (and :attr:`disk_format` when the format changed);
    the import removes *workdir* when it ends, whatever happened.
    """

    image: Image  # the image as the import found it; change :attr:`properties` instead
    path: pathlib.Path  # a local file holding the data as it is now
    disk_format: str  # the data's format now (the image gets it when it becomes active)
    workdir: pathlib.Path  # this import's scratch directory
    method: str  # the import method: glance-direct, web-download, glance-download
    properties: dict[str, str] = dataclasses.field(default_factory=dict)  # set on the image at activation
    # Who asked for the import (the import engine passes the request's viewer): steps
    # that act on the caller's roles (inject_image_metadata's ignore_user_roles) read it.
    # None: unknown, treated as a caller without roles.
    viewer: Viewer | None = None
