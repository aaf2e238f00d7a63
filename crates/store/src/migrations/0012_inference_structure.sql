-- What a request asked of the answer's shape (response_format, tools offered, tool_choice) and
-- the tool calls it got, as JSON: kept, like the texts, only for the requests a deployment's
-- logging policy samples, and PII-masked when the policy says so. And the prompt tokens whose
-- keys and values came from the prefix cache.

ALTER TABLE inference_log ADD COLUMN structure_json TEXT;

ALTER TABLE inference_log ADD COLUMN cached_tokens BIGINT NOT NULL DEFAULT 0
