-- tidewatch schema, version 2: the fleet registry.
-- Which sensor sits on which vessel or site, in which role, loaded from the
-- file the operator maintains (`tidewatch-collector registry load FILE`).
-- Every load writes the whole file under one version (microseconds of the
-- load); a sensor that left the file gets a row with active = 0. The view
-- shows each sensor's latest row.
CREATE TABLE IF NOT EXISTS {{db}}.fleet_registry_raw
(
    sensor_id String,
    vessel String,
    imo String,
    site String,
    role {{string_lc}},
    -- Network zones of the sensor's site (IPv4): zone_names[i] is the zone
    -- of addresses a with bitAnd(a, zone_masks[i]) = zone_nets[i].
    zone_names Array(String),
    zone_nets Array(UInt32),
    zone_masks Array(UInt32),
    active UInt8,
    loaded_at DateTime,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY sensor_id;

CREATE VIEW IF NOT EXISTS {{db}}.fleet_registry AS
SELECT sensor_id, vessel, imo, site, role, zone_names, zone_nets, zone_masks, active, loaded_at, version
FROM {{db}}.fleet_registry_raw FINAL;
