-- Request and response text of the inference log, kept only for the requests a deployment's
-- logging policy samples, and PII-masked when the policy says so.

ALTER TABLE inference_log ADD COLUMN prompt_text TEXT;

ALTER TABLE inference_log ADD COLUMN completion_text TEXT
