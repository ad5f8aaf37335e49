"""gunicorn's worker for this project (gunicorn.conf.py names it): uvicorn serving the ASGI app.

Django speaks no ASGI lifespan, so uvicorn is told not to try (it would log that at every start);
its access log follows gunicorn's `accesslog` (none when WEB_ACCESS_LOG is empty).
"""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off"}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.access_log = bool(self.cfg.accesslog)
