-- no-transaction
-- Events by tenant and time, for each tenant's count and newest event. Built
-- concurrently, so that intake keeps writing while a large table is indexed;
-- that cannot happen inside a transaction, hence the line above and one
-- statement alone. If the build is interrupted, PostgreSQL leaves an invalid
-- index behind: `DROP INDEX events_tenant_received;` and start again.
CREATE INDEX CONCURRENTLY IF NOT EXISTS events_tenant_received ON events (tenant_client_key, received_at);
