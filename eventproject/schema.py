"""OpenAPI links for the whole API (a drf-spectacular hook): which response gives the id the next
call needs (a started job's id → its progress, items, cancel…; a listed user's id → its events).
Clients and schemathesis' stateful tests follow them. Paths are named, no app is imported."""

JOB_ID = "$response.body#/id"
FIRST_JOB_ID = "$response.body#/results/0/id"
FIRST_USER_ID = "$response.body#/results/0/user_id"
LEGACY_JOB_ID = "$response.body#/data/job_id"

JOB_READS = ["v1_jobs_retrieve", "v1_jobs_progress_retrieve", "v1_jobs_items_list", "v1_jobs_stream_retrieve"]
JOB_ACTIONS = [
    "v1_jobs_cancel_create",
    "v1_jobs_resume_create",
    "v1_jobs_retry_failed_create",
    "v1_jobs_partial_update",
]
USER_READS = ["v1_users_retrieve", "v1_users_events_list"]
FIRST_IMPORT_ID = "$response.body#/results/0/id"
SCHEDULE_OPERATIONS = ["v1_schedules_retrieve", "v1_schedules_partial_update", "v1_schedules_runs_list"]

# (path, method, status) -> (the value, the operations taking it, the parameter it fills)
LINKS = {
    ("/api/v1/jobs/", "post", "201"): (JOB_ID, JOB_READS + JOB_ACTIONS, "id"),
    ("/api/v1/jobs/", "get", "200"): (FIRST_JOB_ID, JOB_READS + JOB_ACTIONS, "id"),
    ("/api/v1/jobs/{id}/cancel/", "post", "200"): (JOB_ID, ["v1_jobs_resume_create", *JOB_READS], "id"),
    ("/api/v1/jobs/{id}/resume/", "post", "200"): (JOB_ID, ["v1_jobs_cancel_create", *JOB_READS], "id"),
    ("/api/v1/jobs/{id}/retry-failed/", "post", "201"): (JOB_ID, JOB_READS + JOB_ACTIONS, "id"),
    ("/api/v1/events/extract/start", "post", "200"): (LEGACY_JOB_ID, JOB_READS, "id"),
    ("/api/v1/jobs/{id}/items/", "get", "200"): (FIRST_USER_ID, USER_READS, "user_id"),
    ("/api/v1/events/", "get", "200"): (FIRST_USER_ID, USER_READS, "user_id"),
    ("/api/v1/imports/", "get", "200"): (FIRST_IMPORT_ID, ["v1_imports_retrieve"], "id"),
    ("/api/v1/schedules/", "post", "201"): (JOB_ID, [*SCHEDULE_OPERATIONS, "v1_schedules_destroy"], "id"),
    ("/api/v1/schedules/", "get", "200"): (FIRST_JOB_ID, SCHEDULE_OPERATIONS, "id"),
}


def add_links(result: dict, generator, request, public) -> dict:
    """A drf-spectacular post-processing hook."""
    for (path, method, status), (value, operations, parameter) in LINKS.items():
        response = result["paths"][path][method]["responses"][status]
        response["links"] = {
            operation: {"operationId": operation, "parameters": {parameter: value}}
            for operation in operations
        }
    return result
