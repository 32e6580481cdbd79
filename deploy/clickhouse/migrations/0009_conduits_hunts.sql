-- tidewatch schema, version 9: allowed conduits between zones, and which
-- threat-intel loads the detector has hunted for.
--
-- `conduits` (JSON array, from the fleet registry file) lists the traffic
-- allowed to cross from one zone of a sensor's site to another, or to and
-- from 'outside' (addresses in no zone): [{"from", "to", "ports",
-- "protocols"}]. The detector's zone-crossing rule raises an alert for a
-- connection between two zones that no conduit allows.
--
-- `intel_hunts`: the detector hunts stored history for the indicators of
-- every intel load (by the load's version) once, raising alerts under the
-- same ids as the live rule, and then records the load here; a crash
-- between the two hunts again (the alerts collapse).
--
-- Placeholders: {{db}} database.

-- @modern
ALTER TABLE {{db}}.fleet_registry_raw
    ADD COLUMN IF NOT EXISTS conduits String;
-- @end
-- @legacy
ALTER TABLE {{db}}.fleet_registry_raw
    ADD COLUMN conduits String;
-- @end

DROP TABLE IF EXISTS {{db}}.fleet_registry;

CREATE VIEW IF NOT EXISTS {{db}}.fleet_registry AS
SELECT sensor_id, vessel, imo, site, role, zone_names, zone_nets, zone_masks, conduits,
    active, loaded_at, version
FROM {{db}}.fleet_registry_raw FINAL;

CREATE TABLE IF NOT EXISTS {{db}}.intel_hunts
(
    version UInt64,
    since DateTime,
    until DateTime,
    indicators UInt32,
    alerts UInt32,
    hunted_at DateTime
)
ENGINE = ReplacingMergeTree
ORDER BY version;
