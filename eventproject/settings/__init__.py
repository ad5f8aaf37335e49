"""Settings for eventproject, read from the environment.

Every knob is an environment variable with a safe default; a bad value raises
ImproperlyConfigured at start-up instead of failing later in a worker. web.py holds Django's and
the web server's settings, service.py the service's own.
"""

from eventproject.settings.service import *  # noqa: F403
from eventproject.settings.web import *  # noqa: F403
