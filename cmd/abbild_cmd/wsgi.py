"""The module-level WSGI ``application`` of abbild-api, for mod_wsgi, uWSGI and any
other WSGI server: ``abbild_cmd.wsgi:application``.

It reads ``abbild-api.conf`` (and ``abbild-api-paste.ini``, if present; otherwise the
shipped pipelines) from ``$ABBILD_CONFIG_DIR``, default ``/etc/abbild``, like Glance's
``OS_GLANCE_CONFIG_DIR``. The server must pass chunked request bodies through
(mod_wsgi: ``WSGIChunkedRequest On``): clients upload images of unknown size that way.
"""

from __future__ import annotations

from abbild import config, logging_setup
from abbild_paste.pipeline import load_api


def init_application():
    files = [config.service_config_file("abbild-api")]
    conf = config.load(files)
    logging_setup.setup(conf, "abbild-api")
    return logging_setup.per_request(load_api(files, conf=conf))


application = init_application()
