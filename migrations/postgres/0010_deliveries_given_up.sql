-- `/metrics` counts the deliveries given up on every few seconds; this keeps
-- that count to the (few) rows it is about instead of the whole history.
CREATE INDEX deliveries_given_up ON deliveries (state) WHERE state IN ('failed', 'dead');
