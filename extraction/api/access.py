"""The permissions the results and imports endpoints ask for: the model permissions the admin asks
for too (see the groups in jobs/migrations/0005_groups.py)."""

VIEW_PROFILE = "extraction.view_userprofile"
VIEW_EVENT = "extraction.view_extractedevent"
VIEW_IMPORT = "extraction.view_dataimport"
