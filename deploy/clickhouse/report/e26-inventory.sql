-- The inventory: every address the vessel's sensors observed (latest
-- state), with its zone, the maker by MAC (IEEE OUI), what the device said
-- of itself (vendor, product, firmware, serial, from which protocol), its
-- software banners, protocols, roles, and first and last seen. Empty
-- fields are unknown: the device never said.
SELECT
    ip, mac, zone, vendor, device_vendor, product, firmware, serial,
    identity_protocol, software, protocols, roles,
    toDateTime(intDiv(first_seen_us, 1000000)) AS first_seen,
    toDateTime(intDiv(last_seen_us, 1000000)) AS last_seen
FROM
(
    SELECT a.*,
        arrayFirstIndex((n, m) -> position(ip, ':') = 0 AND bitAnd(IPv4StringToNum(ip), m) = n, zone_nets, zone_masks) AS zi,
        if(zi = 0, 'outside', zone_names[zi]) AS zone
    FROM (SELECT * FROM assets_latest WHERE vessel = {vessel} AND first_seen_us < {until} * 1000000) AS a
    ANY LEFT JOIN
    (
        SELECT sensor_id, zone_names, zone_nets, zone_masks FROM fleet_registry WHERE active = 1
    ) AS r USING (sensor_id)
)
ORDER BY zone, ip
