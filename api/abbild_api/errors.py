"""The one table from abbild's errors to HTTP statuses."""

from __future__ import annotations

import logging

import webob.exc as exc

from abbild import errors as e

LOG = logging.getLogger(__name__)


class UnsupportedMediaType(exc.HTTPUnsupportedMediaType):
    """415 that says what is wrong: webob's own body names only the request's
    Content-Type, which is right for the wrong header and wrong for refused image data."""

    body_template_obj = exc.WSGIHTTPException.body_template_obj


# First match wins, so subclasses come before their bases.
STATUS = (
    (e.Gone, exc.HTTPGone),
    (e.TooManyJobs, exc.HTTPTooManyRequests),
    (e.Busy, exc.HTTPServiceUnavailable),
    (e.ImageNotFound, exc.HTTPNotFound),
    (e.MemberNotFound, exc.HTTPNotFound),
    (e.TaskNotFound, exc.HTTPNotFound),
    (e.MetadefNotFound, exc.HTTPNotFound),
    (e.InvalidImageData, UnsupportedMediaType),
    (e.QuotaExceeded, exc.HTTPRequestEntityTooLarge),
    (e.DuplicateImage, exc.HTTPConflict),
    (e.ConcurrentUpdate, exc.HTTPConflict),
    (e.InvalidTransition, exc.HTTPConflict),
    (e.Conflict, exc.HTTPConflict),
    (e.Forbidden, exc.HTTPForbidden),
    (e.Invalid, exc.HTTPBadRequest),
    (e.SizeLimitExceeded, exc.HTTPRequestEntityTooLarge),
    (e.SizeMismatch, exc.HTTPBadRequest),
    (e.StoreFull, exc.HTTPRequestEntityTooLarge),
    (e.NotFound, exc.HTTPNotFound),
    (e.AlreadyExists, exc.HTTPConflict),
    (e.InUse, exc.HTTPConflict),
    # The client named a store that cannot do this (a read-only http store, say).
    (e.UnsupportedOperation, exc.HTTPBadRequest),
    (e.AccessDenied, exc.HTTPServiceUnavailable),
    (e.BackendUnavailable, exc.HTTPServiceUnavailable),
    (e.BackendError, exc.HTTPServiceUnavailable),
    (e.RegistryUnavailable, exc.HTTPServiceUnavailable),
)


def to_http(error: e.AbbildError) -> exc.HTTPException:
    for cls, http in STATUS:
        if isinstance(error, cls):
            return http(explanation=str(error))
    LOG.error("unmapped error: %r", error)
    return exc.HTTPInternalServerError()
