"""gunicorn's worker for this project (gunicorn.conf.py names it): uvicorn serving the ASGI app.

Django speaks no ASGI lifespan, so uvicorn is told not to try (it would log that at every start);
its access log follows gunicorn's `accesslog` (none when WEB_ACCESS_LOG is empty). uvicorn's own
reading of X-Forwarded-For and -Proto (from loopback by default) is off: TRUSTED_PROXIES alone says
whose are believed (eventproject.proxies).

On a stop or a reload, progress streams end at once (their clients reconnect to a process that goes
on), and any response still open CUT_BEFORE_KILL_SECONDS before gunicorn would kill the process is
cut, so the old process always exits by itself.
"""

import sys

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from .signals import web_process_stopping

# A response still open this long after a stop or reload began is cut: before gunicorn kills the
# process (graceful_timeout after a stop) or takes its silence for a hang (timeout, after a reload).
CUT_BEFORE_KILL_SECONDS = 5


class StoppingServer(Server):
    """uvicorn's server, telling the application when it begins to stop (web_process_stopping)."""

    def handle_exit(self, sig, frame):
        if not self.should_exit:
            web_process_stopping.send_robust(sender=type(self))  # never raises into the interrupted code
        super().handle_exit(sig, frame)


class Worker(UvicornWorker):
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "lifespan": "off", "proxy_headers": False}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.access_log = bool(self.cfg.accesslog)
        self.config.timeout_graceful_shutdown = max(
            min(self.cfg.graceful_timeout, self.cfg.timeout) - CUT_BEFORE_KILL_SECONDS, 1
        )

    async def _serve(self) -> None:
        """uvicorn_worker's own, with StoppingServer."""
        self.config.app = self.wsgi
        server = StoppingServer(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
