"""Hook specifications: how plugins take part in the image lifecycle.

Plugins implement these with ``@abbild.hookimpl`` and publish themselves in the
``abbild.plugins`` entry-point group. Hooks are called with keyword arguments; an
implementation may accept a subset of them.

Lifecycle notifications (``abbild_image_*``) fire after the metadata change is
committed. Their exceptions are logged with the plugin's name and never fail the
request: a broken notifier must not break uploads.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("abbild")


# -- configuration ------------------------------------------------------------------


@hookspec(historic=True)
def abbild_configure(conf):
    """Called once the service's configuration is parsed.

    :param conf: the service's :class:`oslo_config.cfg.ConfigOpts`; a plugin may
        register its own option group here.

    Historic: plugins registered later still receive it.
    """


@hookspec(firstresult=True)
def abbild_select_store(image, stores):
    """Choose the store that receives a new upload when the client named none.

    :param image: the :class:`abbild.image.Image` being uploaded.
    :param stores: mapping of store name to :class:`abbild.stores.Store`, writable
        stores only.
    :returns: a store name, or ``None`` to let the next plugin decide.

    Stops at the first non-None result. The built-in implementation runs last and
    returns ``default_backend``.
    """


# -- image lifecycle notifications ------------------------------------------------------


@hookspec
def abbild_image_created(image):
    """An image record was created. :param image: the new :class:`abbild.image.Image`."""


@hookspec
def abbild_image_updated(image):
    """An image's metadata changed (PATCH, tags). :param image: the image after the change."""


@hookspec
def abbild_image_uploaded(image, location):
    """Image data was stored.

    :param image: the image, already ``active``.
    :param location: the new :class:`abbild.image.Location`.
    """


@hookspec
def abbild_image_upload_failed(image, error):
    """An upload failed and was rolled back; the image is ``queued`` again.

    :param image: the image after the rollback.
    :param error: the exception that ended the upload.
    """


@hookspec
def abbild_image_activated(image):
    """The image became ``active`` (after an upload, or on reactivation)."""


@hookspec
def abbild_image_deactivated(image):
    """The image was deactivated; its data can no longer be downloaded by non-admins."""


@hookspec
def abbild_image_deleted(image):
    """The image was deleted and its data removed. :param image: the image as it was."""
