-- tidewatch schema, version 6: threat intelligence.
-- Indicators loaded from feeds (`tidewatch-collector intel load FILE`: STIX
-- 2.1 bundles, MISP exports, plain lists), each with its source, its place
-- in the feed and its validity. `matches` is what a flow is compared with:
-- an address as the sink writes client_ip/server_ip, or a lowercase name as
-- the sensor records DNS names, TLS SNI and HTTP Host in `indicators` (a
-- URL by its host). A feed loaded again replaces its rows (same source,
-- kind and value; the newest load wins).
--
-- Placeholders: {{db}} database, {{string_lc}}.
CREATE TABLE IF NOT EXISTS {{db}}.intel_indicators_raw
(
    source {{string_lc}},
    kind {{string_lc}},
    value String,
    matches String,
    feed_format {{string_lc}},
    reference String,
    description String,
    valid_from DateTime,
    valid_until DateTime,
    loaded_at DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (source, kind, value);

CREATE VIEW IF NOT EXISTS {{db}}.intel_indicators AS
SELECT source, kind, value, matches, feed_format, reference, description,
    valid_from, valid_until, loaded_at, version
FROM {{db}}.intel_indicators_raw FINAL;
