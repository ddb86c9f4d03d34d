"""The ``example_checksum_property`` import step: the example third-party plugin.

It shows everything an import step needs: a module published in the ``abbild.plugins``
entry-point group, one ``abbild_import_steps`` hook returning ``{name: step}``, and a
step that reads the staged file and sets a property the image gets when it becomes
active. An operator turns it on by its name:

.. code-block:: ini

    [image_import_opts]
    image_import_plugins = image_decompression, example_checksum_property
"""

from __future__ import annotations

import hashlib

from abbild import hookimpl
from abbild.import_steps import StagedData
from abbild.streams import read_chunks

PROPERTY = "example_sha256"


def checksum_property(staged: StagedData) -> None:
    """Set ``example_sha256`` to the SHA-256 of the staged data as the previous steps
    left it (after decompression, the decompressed data's)."""
    digest = hashlib.sha256()
    with open(staged.path, "rb") as f:
        for chunk in read_chunks(f):  # images reach tens of GiB: never read() them whole
            digest.update(chunk)
    staged.properties[PROPERTY] = digest.hexdigest()


@hookimpl
def abbild_import_steps():
    return {"example_checksum_property": checksum_property}
