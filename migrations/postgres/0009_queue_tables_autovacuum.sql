-- deliveries, outbox and local_queue_messages are queues: rows come and go by
-- the thousand a second. With the default thresholds (a fifth of the table)
-- their statistics and dead rows lag far behind a growing backlog, and the
-- planner then reads every due row to find the first few. Vacuum and
-- analyze them after every 2% of change instead.
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
ALTER TABLE local_queue_messages SET (autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
