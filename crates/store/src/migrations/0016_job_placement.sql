-- Where a job's attempts ran when an executor outside the process ran them: for Slurm, the
-- Slurm job id and node of the current attempt and those of earlier ones (JSON).
ALTER TABLE jobs ADD COLUMN placement TEXT
