-- Retention of assets and sensor status: kept as long as the hourly rollups
-- (--rollup-retention-days), by TTL on servers that have it. Older servers
-- (no TTL) drop their expired partitions with `tidewatch-collector
-- maintenance retention`, which covers these tables already.
--
-- Placeholders: {{db}} database, {{rollup_days}} rollup retention in days.

-- @modern
ALTER TABLE {{db}}.assets_raw
    MODIFY TTL toDateTime(intDiv(last_seen_us, 1000000)) + INTERVAL {{rollup_days}} DAY;

ALTER TABLE {{db}}.sensor_status_raw
    MODIFY TTL toDateTime(intDiv(observed_us, 1000000)) + INTERVAL {{rollup_days}} DAY;
-- @end
