-- The W3C traceparent of the span that wrote an outbox row, sent as the AMQP header of its
-- message, so a trace continues across the broker. NULL when tracing is off.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
