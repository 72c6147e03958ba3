"""Operations: the flow, jobs, scheduler, background jobs, progress, logs, access."""
