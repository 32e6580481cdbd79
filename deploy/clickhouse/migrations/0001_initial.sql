-- tidewatch schema, version 1.
--
-- Rendered by `tidewatch-collector migrate` for the detected server version:
--   {{db}}          database name
--   {{string_lc}}   LowCardinality(String) where supported, else String
--   {{codec_delta}} CODEC(Delta, ZSTD(1)) where supported, else nothing
--   {{codec_zstd}}  CODEC(ZSTD(1)) where supported, else nothing
--   {{flows_ttl}}   TTL clause for raw flows where supported, else nothing
-- Lines between "-- @modern" and "-- @end" are kept only on modern servers,
-- lines between "-- @legacy" and "-- @end" only on old ones.
-- Statements end with a semicolon at the end of a line.
--
-- Exactly-once: every *_raw table is a ReplacingMergeTree whose sorting key is
-- the record's identity (sensor_id, batch_seq, record_idx), partitioned by the
-- record's own capture time, so a batch stored twice (sensor resend, sink
-- restart between insert and commit) collapses to one row. Analysts query the
-- views without the _raw suffix, which read FINAL and so never count a
-- duplicate even before the background merge has removed it.

CREATE TABLE IF NOT EXISTS {{db}}.flows_raw
(
    sensor_id {{string_lc}},
    vessel {{string_lc}},
    batch_seq UInt64,
    record_idx UInt32,
    received_at DateTime,
    first_seen_us Int64 {{codec_delta}},
    last_seen_us Int64 {{codec_delta}},
    first_seen DateTime MATERIALIZED toDateTime(intDiv(first_seen_us, 1000000)),
    last_seen DateTime MATERIALIZED toDateTime(intDiv(last_seen_us, 1000000)),
    client_ip String {{codec_zstd}},
    server_ip String {{codec_zstd}},
    client_port UInt16,
    server_port UInt16,
    ip_protocol UInt8,
    transport {{string_lc}},
    app_protocol {{string_lc}},
    vlan UInt16,
    c2s_packets UInt64,
    c2s_bytes UInt64,
    c2s_payload_bytes UInt64,
    c2s_tcp_flags UInt8,
    s2c_packets UInt64,
    s2c_bytes UInt64,
    s2c_payload_bytes UInt64,
    s2c_tcp_flags UInt8,
    end_reason {{string_lc}},
    op_codes Array(UInt32),
    op_names Array(String),
    op_classes Array(String),
    op_counts Array(UInt64),
    op_errors Array(UInt64),
    indicators Array(String)
-- @modern
    , client_ip6 IPv6 MATERIALIZED toIPv6(client_ip)
    , server_ip6 IPv6 MATERIALIZED toIPv6(server_ip)
-- @end
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(toDateTime(intDiv(first_seen_us, 1000000)))
ORDER BY (sensor_id, batch_seq, record_idx)
{{flows_ttl}};

CREATE TABLE IF NOT EXISTS {{db}}.assets_raw
(
    sensor_id {{string_lc}},
    vessel {{string_lc}},
    batch_seq UInt64,
    record_idx UInt32,
    received_at DateTime,
    mac String,
    ips Array(String),
    vendor String,
    first_seen_us Int64,
    last_seen_us Int64,
    first_seen DateTime MATERIALIZED toDateTime(intDiv(first_seen_us, 1000000)),
    last_seen DateTime MATERIALIZED toDateTime(intDiv(last_seen_us, 1000000)),
    protocols Array(String),
    roles Array(String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(last_seen_us, 1000000)))
ORDER BY (sensor_id, batch_seq, record_idx);

CREATE TABLE IF NOT EXISTS {{db}}.sensor_status_raw
(
    sensor_id {{string_lc}},
    vessel {{string_lc}},
    batch_seq UInt64,
    record_idx UInt32,
    received_at DateTime,
    observed_us Int64,
    observed_at DateTime MATERIALIZED toDateTime(intDiv(observed_us, 1000000)),
    capture_packets UInt64,
    capture_drops UInt64,
    buffer_backlog_bytes UInt64,
    buffer_backlog_records UInt64,
    records_dropped UInt64,
    flows_evicted UInt64,
    software_version String,
    bytes_sent_today UInt64,
    daily_byte_budget UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(toDateTime(intDiv(observed_us, 1000000)))
ORDER BY (sensor_id, batch_seq, record_idx);

-- One row per batch stored by the sink: lets a restarted sink skip batches it
-- already stored, and shows analysts what arrived from whom and when.
CREATE TABLE IF NOT EXISTS {{db}}.batches
(
    sensor_id {{string_lc}},
    vessel {{string_lc}},
    seq UInt64,
    received_at DateTime,
    inserted_at DateTime,
    flows UInt32,
    assets UInt32,
    statuses UInt32,
    kafka_partition Int32,
    kafka_offset Int64,
    ingest_node String
)
ENGINE = ReplacingMergeTree
ORDER BY (sensor_id, seq);

CREATE VIEW IF NOT EXISTS {{db}}.flows AS
SELECT
    sensor_id, vessel, batch_seq, record_idx, received_at,
    first_seen_us, last_seen_us, first_seen, last_seen,
    client_ip, server_ip, client_port, server_port, ip_protocol, transport,
    app_protocol, vlan,
    c2s_packets, c2s_bytes, c2s_payload_bytes, c2s_tcp_flags,
    s2c_packets, s2c_bytes, s2c_payload_bytes, s2c_tcp_flags,
    end_reason, op_codes, op_names, op_classes, op_counts, op_errors, indicators
FROM {{db}}.flows_raw FINAL;

CREATE VIEW IF NOT EXISTS {{db}}.assets AS
SELECT
    sensor_id, vessel, batch_seq, record_idx, received_at, mac, ips, vendor,
    first_seen_us, last_seen_us, first_seen, last_seen, protocols, roles
FROM {{db}}.assets_raw FINAL;

CREATE VIEW IF NOT EXISTS {{db}}.sensor_status AS
SELECT
    sensor_id, vessel, batch_seq, record_idx, received_at, observed_us, observed_at,
    capture_packets, capture_drops, buffer_backlog_bytes, buffer_backlog_records,
    records_dropped, flows_evicted, software_version, bytes_sent_today, daily_byte_budget
FROM {{db}}.sensor_status_raw FINAL;
