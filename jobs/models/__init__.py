"""The jobs app's tables, a module per role: jobs.py (Job, JobItem, Drain, their statuses and
priorities), schedules.py (Schedule, ScheduleRun). Imported here, where Django and every caller
look for them."""

from .jobs import PRIORITY_NAMES, Drain, Job, JobItem, percent_done, share_errors
from .schedules import Schedule, ScheduleRun

__all__ = [
    "PRIORITY_NAMES",
    "Drain",
    "Job",
    "JobItem",
    "Schedule",
    "ScheduleRun",
    "percent_done",
    "share_errors",
]
