"""What workers do, by role: the drain loop a task runs (drain), which job it serves next
(scheduler), a chunk's claim (claims), extraction (chunk), fenced commit (commit), its leases kept
alive (keeper) and what the extractor sees of its job (control). The state changes they make are in
jobs.transitions; docs/architecture.md describes the protocol and the faults each part heals."""
