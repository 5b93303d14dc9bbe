"""web stage: the node's read-only HTTP side (health, readiness, metrics).

:func:`dicomnode.web.app.create_app` builds the application, one router per area;
:class:`dicomnode.web.server.WebServer` serves it in a thread of the serving process.
Like every stage it reads the node only through the index (``docs/operate.md``).
"""
