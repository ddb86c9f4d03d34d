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
    """The image was deleted: it is gone from every caller's view.

    :param image: the image as saved: ``deleted``, or ``pending_delete`` when its data
        waits for the scrubber (``delayed_delete``, with ``deleted_at``) or a store could
        not delete it yet. Called once, when the delete is asked for, as Glance sends
        ``image.delete``; the scrubber's later work on the data calls it no more.
    """


@hookspec
def abbild_image_preparing(image, store):
    """Data for the image is about to be written to *store* (a :class:`abbild.stores.Store`):
    an upload, or one store of an import (Glance's ``image.prepare``)."""


@hookspec
def abbild_image_sent(image, bytes_sent, viewer, error):
    """A download ended (Glance's ``image.send``).

    :param bytes_sent: how many bytes reached the client.
    :param viewer: the :class:`abbild.registry.Viewer` who downloaded it.
    :param error: ``None``, or the exception that cut the download short.
    """


@hookspec
def abbild_image_member_created(image, member):
    """*member* (a :class:`abbild.registry.Member`) was added to the shared *image*."""


@hookspec
def abbild_image_member_updated(image, member):
    """*member* accepted or rejected the shared *image*."""


@hookspec
def abbild_image_member_deleted(image, member):
    """*member* was removed from the shared *image*."""


# -- tasks (imports) --------------------------------------------------------------------


@hookspec
def abbild_task_created(task):
    """A task (an :class:`abbild.tasks.Task`, ``pending``) was recorded."""


@hookspec
def abbild_task_processing(task):
    """The task started its work (``processing``)."""


@hookspec
def abbild_task_succeeded(task):
    """The task ended in ``success``; ``task.result`` says what it did."""


@hookspec
def abbild_task_failed(task):
    """The task ended in ``failure``; ``task.message`` says why."""


# -- metadata definitions -------------------------------------------------------------------


@hookspec
def abbild_metadef_changed(event, namespace, item, old_name):
    """A metadata definition changed; fired after the write is committed.

    :param event: Glance's event type: ``metadef_namespace.create``, ``.update``,
        ``.delete``, ``.delete_objects``, ``.delete_properties``, ``.delete_tags``;
        ``metadef_object.*``, ``metadef_property.*`` and ``metadef_tag.*`` (``create``,
        ``update``, ``delete``); ``metadef_resource_type.create`` and ``.delete`` (an
        association).
    :param namespace: the :class:`abbild.metadefs.Namespace` as it is now (as it was,
        for a delete).
    :param item: what the event is about inside the namespace: a
        :class:`~abbild.metadefs.MetadefObject`, a :class:`~abbild.metadefs.PropertyDefinition`,
        a :class:`~abbild.metadefs.MetadefTag` or an :class:`~abbild.metadefs.Association`
        (as it is now, or was for a delete); ``None`` for ``metadef_namespace.*``.
    :param old_name: for an ``update``, the name it had before (the namespace's, or
        the item's); else ``None``.
    """


# -- the image's data ----------------------------------------------------------------------


@hookspec
def abbild_data_checks(image, purpose):
    """Check new data for *image* as it streams in, in the same pass as the hashing.

    :param image: the :class:`abbild.image.Image` the data is for.
    :param purpose: ``"upload"`` (``PUT .../file``), ``"stage"`` (``PUT .../stage``) or
        ``"import"`` (data an import method fetched or a step produced).
    :returns: an :class:`abbild.streams.DataCheck`, or ``None`` for no check. Every
        plugin's check sees every chunk.
    """


@hookspec
def abbild_import_steps():
    """The import steps this plugin offers, by name.

    :returns: ``{name: step}``; the operator runs some of them, in the order named in
        ``[image_import_opts] image_import_plugins``. A step is called as
        ``step(staged)`` with an :class:`abbild.import_steps.StagedData` and may change
        its data (write a new file, set ``staged.path`` and ``staged.disk_format``) or
        the properties the image gets. It raises to fail the import:
        :class:`~abbild.errors.InvalidImageData` or :class:`~abbild.errors.Invalid` with a
        message the image's owner can act on.
    """
