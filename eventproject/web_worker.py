"""gunicorn's worker for this project (gunicorn.conf.py names it): uvicorn serving the ASGI app.

Django speaks no ASGI lifespan, so uvicorn is told not to try (it would log that at every start);
its access log follows gunicorn's `accesslog` (none when WEB_ACCESS_LOG is empty). uvicorn's own
reading of X-Forwarded-For and -Proto (from loopback by default) is off: TRUSTED_PROXIES alone says
whose are believed (eventproject.proxies).
"""

from uvicorn_worker import UvicornWorker


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off", "proxy_headers": False}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.access_log = bool(self.cfg.accesslog)
