-- tidewatch schema, version 3: rollups and the latest state of each asset.
--
-- traffic_hourly_raw: flows per hour, vessel/sensor, destination (address,
-- port) and protocol, filled by a materialized view from flows_raw. Each
-- row is the aggregate of one batch (sink inserts carry whole batches), and
-- the table is a ReplacingMergeTree keyed by (..., sensor_id, batch_seq):
-- a batch stored twice produces the same rows, which collapse, so sums
-- over FINAL (the traffic_hourly view) count every flow once. Rollups are
-- kept longer than raw flows ({{rollup_ttl}} on modern servers; `maintenance
-- retention` drops old partitions on old ones).
CREATE TABLE IF NOT EXISTS {{db}}.traffic_hourly_raw
(
    vessel {{string_lc}},
    sensor_id {{string_lc}},
    batch_seq UInt64,
    hour DateTime,
    server_ip String,
    server_port UInt16,
    transport {{string_lc}},
    app_protocol {{string_lc}},
    flows UInt64,
    packets UInt64,
    c2s_bytes UInt64,
    s2c_bytes UInt64,
    first_flow_us Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (vessel, hour, server_ip, server_port, transport, app_protocol, sensor_id, batch_seq)
{{rollup_ttl}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.traffic_hourly_mv TO {{db}}.traffic_hourly_raw AS
SELECT
    vessel, sensor_id, batch_seq,
    toStartOfHour(toDateTime(intDiv(first_seen_us, 1000000))) AS hour,
    server_ip, server_port, transport, app_protocol,
    count() AS flows,
    sum(c2s_packets + s2c_packets) AS packets,
    sum(c2s_bytes) AS c2s_bytes,
    sum(s2c_bytes) AS s2c_bytes,
    min(first_seen_us) AS first_flow_us
FROM {{db}}.flows_raw
GROUP BY vessel, sensor_id, batch_seq, hour, server_ip, server_port, transport, app_protocol;

-- Flows stored before this migration (a duplicate of what the view adds
-- later collapses like any other).
INSERT INTO {{db}}.traffic_hourly_raw
SELECT
    vessel, sensor_id, batch_seq,
    toStartOfHour(toDateTime(intDiv(first_seen_us, 1000000))) AS hour,
    server_ip, server_port, transport, app_protocol,
    count() AS flows,
    sum(c2s_packets + s2c_packets) AS packets,
    sum(c2s_bytes) AS c2s_bytes,
    sum(s2c_bytes) AS s2c_bytes,
    min(first_seen_us) AS first_flow_us
FROM {{db}}.flows_raw FINAL
GROUP BY vessel, sensor_id, batch_seq, hour, server_ip, server_port, transport, app_protocol;

-- dest_hourly_raw: the same per-batch rollup by destination address only
-- (no port or protocol), smaller: what the baselines of the query pack
-- read (volume spikes, new destinations, campaigns).
CREATE TABLE IF NOT EXISTS {{db}}.dest_hourly_raw
(
    vessel {{string_lc}},
    sensor_id {{string_lc}},
    batch_seq UInt64,
    hour DateTime,
    server_ip String,
    flows UInt64,
    c2s_bytes UInt64,
    s2c_bytes UInt64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (vessel, hour, server_ip, sensor_id, batch_seq)
{{rollup_ttl}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.dest_hourly_mv TO {{db}}.dest_hourly_raw AS
SELECT
    vessel, sensor_id, batch_seq,
    toStartOfHour(toDateTime(intDiv(first_seen_us, 1000000))) AS hour,
    server_ip,
    count() AS flows,
    sum(c2s_bytes) AS c2s_bytes,
    sum(s2c_bytes) AS s2c_bytes
FROM {{db}}.flows_raw
GROUP BY vessel, sensor_id, batch_seq, hour, server_ip;

INSERT INTO {{db}}.dest_hourly_raw
SELECT
    vessel, sensor_id, batch_seq,
    toStartOfHour(toDateTime(intDiv(first_seen_us, 1000000))) AS hour,
    server_ip,
    count() AS flows,
    sum(c2s_bytes) AS c2s_bytes,
    sum(s2c_bytes) AS s2c_bytes
FROM {{db}}.flows_raw FINAL
GROUP BY vessel, sensor_id, batch_seq, hour, server_ip;

CREATE VIEW IF NOT EXISTS {{db}}.traffic_hourly AS
SELECT
    vessel, sensor_id, hour, server_ip, server_port, transport, app_protocol,
    sum(f) AS flows, sum(p) AS packets, sum(cb) AS c2s_bytes, sum(sb) AS s2c_bytes,
    min(fu) AS first_flow_us
FROM
(
    SELECT vessel, sensor_id, hour, server_ip, server_port, transport, app_protocol,
           flows AS f, packets AS p, c2s_bytes AS cb, s2c_bytes AS sb, first_flow_us AS fu
    FROM {{db}}.traffic_hourly_raw FINAL
)
GROUP BY vessel, sensor_id, hour, server_ip, server_port, transport, app_protocol;

-- The latest state of each asset (one row per vessel and address).
CREATE VIEW IF NOT EXISTS {{db}}.assets_latest AS
SELECT
    vessel, ip,
    argMax(m, ls) AS mac,
    argMax(v, ls) AS vendor,
    min(fs) AS first_seen_us,
    max(ls) AS last_seen_us,
    groupUniqArrayArray(pr) AS protocols,
    groupUniqArrayArray(ro) AS roles,
    any(sid) AS sensor_id
FROM
(
    SELECT vessel, sensor_id AS sid, arrayJoin(ips) AS ip, mac AS m, vendor AS v,
           first_seen_us AS fs, last_seen_us AS ls, protocols AS pr, roles AS ro
    FROM {{db}}.assets_raw FINAL
)
GROUP BY vessel, ip;
