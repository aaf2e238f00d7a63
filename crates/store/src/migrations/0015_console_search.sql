-- What the console searches and pages through. The audit log by who and what: each record's
-- principal and action beside its canonical text, taken from that text for the records already
-- there. A tenant's jobs, newest first, a page at a time.
ALTER TABLE audit_records ADD COLUMN principal TEXT;
ALTER TABLE audit_records ADD COLUMN action TEXT;
UPDATE audit_records SET principal = {record_field:principal}, action = {record_field:action};
CREATE INDEX audit_records_by_principal ON audit_records (principal, idx);
CREATE INDEX audit_records_by_action ON audit_records (action, idx);
CREATE INDEX jobs_by_tenant ON jobs (tenant, created_at)
