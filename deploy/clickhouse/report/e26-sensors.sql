-- The vessel's sensors as the fleet registry lists them: site, role, IMO
-- number, network zones and the conduits allowed between them (JSON).
SELECT sensor_id, vessel, imo, site, role, zone_names, conduits, loaded_at
FROM fleet_registry
WHERE vessel = {vessel} AND active = 1
ORDER BY sensor_id
