"""Signals of the project's own, for what no app owns."""

from django.dispatch import Signal

# This web process is stopping (gunicorn's stop or reload, under its uvicorn workers): whatever holds
# a response open until its client leaves (a progress stream) should end it now, not hold the old
# process until its graceful timeout. Sent from the process's signal handler, on the event loop's
# thread: a receiver must only flag and schedule.
web_process_stopping = Signal()
