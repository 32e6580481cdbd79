-- tidewatch schema, version 5: what a sensor holds set aside.
-- A batch the collector refused for good (or one over its message limit
-- that cannot be split) leaves the sensor's upload queue for its disk, so it
-- never blocks the batches behind it; SensorStatus then reports how many
-- batches and flow records are held there and the latest reason, until an
-- operator retries them (`tidewatch-sensor buffer set-aside retry`).
--
-- Placeholders: {{db}} database.

-- @modern
ALTER TABLE {{db}}.sensor_status_raw
    ADD COLUMN IF NOT EXISTS batches_set_aside UInt64,
    ADD COLUMN IF NOT EXISTS records_set_aside UInt64,
    ADD COLUMN IF NOT EXISTS set_aside_reason String;
-- @end
-- @legacy
ALTER TABLE {{db}}.sensor_status_raw
    ADD COLUMN batches_set_aside UInt64,
    ADD COLUMN records_set_aside UInt64,
    ADD COLUMN set_aside_reason String;
-- @end

DROP TABLE IF EXISTS {{db}}.sensor_status;

CREATE VIEW IF NOT EXISTS {{db}}.sensor_status AS
SELECT
    sensor_id, vessel, batch_seq, record_idx, received_at, observed_us, observed_at,
    capture_packets, capture_drops, buffer_backlog_bytes, buffer_backlog_records,
    records_dropped, flows_evicted, software_version, bytes_sent_today, daily_byte_budget,
    batches_set_aside, records_set_aside, set_aside_reason
FROM {{db}}.sensor_status_raw FINAL;
