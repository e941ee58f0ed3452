-- Events by tenant and time, for each tenant's count and newest event.
CREATE INDEX IF NOT EXISTS events_tenant_received ON events (tenant_client_key, received_at);
