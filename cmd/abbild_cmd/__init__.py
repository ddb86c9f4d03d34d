"""How abbild starts: the ``abbild`` command, the embedded gunicorn server (API and
registry) and the WSGI ``application`` for mod_wsgi and other servers.

The composition root: it alone imports the core, the API, the pipelines and the
registry service together; none of them imports it."""
