-- tidewatch schema, version 8: which alert reached which destination.
-- `tidewatch-collector deliver` writes a row once an alert is delivered and
-- reads them back at start, so an alert raised again (same id) is not sent
-- to a destination twice.
--
-- Placeholders: {{db}} database, {{string_lc}}.
CREATE TABLE IF NOT EXISTS {{db}}.alert_deliveries
(
    destination {{string_lc}},
    id String,
    delivered_at DateTime
)
ENGINE = ReplacingMergeTree
ORDER BY (destination, id);
