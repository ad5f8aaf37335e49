"""The ASGI application the web server runs (gunicorn.conf.py: uvicorn workers).

Django runs each request's synchronous code (middleware, DRF views, the ORM) on a thread of its
own, which lives as long as the response: a progress stream would hold one for its whole life,
and every request would open a database connection of its own. This handler runs it instead on
the process's one synchronous thread, as a sync worker would, with its persistent connection;
what waits (progress streams) waits as coroutines beside it. So a worker process serves one
ordinary request at a time: WEB_CONCURRENCY processes share the cores.
"""

import os

from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventproject.settings")


class Handler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)  # no ThreadSensitiveContext: one sync thread


def _application() -> Handler:
    import django

    django.setup(set_prefix=False)
    return Handler()


application = _application()
