-- tidewatch schema, version 10: the hourly rollups are written by the sink.
-- The sink aggregates each batch's stored flows per hour and destination
-- (`traffic_hourly_raw`, `dest_hourly_raw`, rows keyed by their batch as
-- before) and inserts them beside the flows; the materialized views that
-- did this inside ClickHouse took half of each insert's time there. Run
-- this migration together with sinks of this version: an older sink's
-- inserts would no longer be rolled up.
--
-- Placeholders: {{db}} database.
DROP TABLE IF EXISTS {{db}}.traffic_hourly_mv;

DROP TABLE IF EXISTS {{db}}.dest_hourly_mv;
