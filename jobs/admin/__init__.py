"""The jobs app's admin, a module per screen: jobs (start, watch, act), their items, schedules.

Importing the modules registers their ModelAdmins with the admin site.
"""

from . import items, jobs, schedules

__all__ = ["items", "jobs", "schedules"]
