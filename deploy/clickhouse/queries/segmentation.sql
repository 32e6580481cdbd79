-- Segmentation breaks: connections into a vessel's OT zone from outside it
-- (ashore, or the IT, crew or navigation zones), with the zones of both
-- ends. Zones come from the fleet registry (IPv4 CIDRs per sensor); an
-- address in no zone is 'outside'.
SELECT
    vessel, client_ip, client_zone, server_ip, server_zone, server_port, app_protocol,
    count() AS flows,
    min(first_seen) AS first_at
FROM
(
    SELECT
        vessel, client_ip, server_ip, server_port, app_protocol, first_seen,
        arrayFirstIndex((n, m) -> bitAnd(IPv4StringToNum(client_ip), m) = n, zone_nets, zone_masks) AS ci,
        arrayFirstIndex((n, m) -> bitAnd(IPv4StringToNum(server_ip), m) = n, zone_nets, zone_masks) AS si,
        if(ci = 0, 'outside', zone_names[ci]) AS client_zone,
        if(si = 0, 'outside', zone_names[si]) AS server_zone
    FROM flows_raw FINAL
    GLOBAL ANY LEFT JOIN
    (
        SELECT sensor_id, zone_names, zone_nets, zone_masks
        FROM fleet_registry
        WHERE active = 1 AND notEmpty(zone_names)
    ) AS r USING (sensor_id)
    -- ANY LEFT JOIN, not ANY INNER JOIN: modern servers take one row per
    -- key from both sides of an ANY INNER JOIN. Sensors without zones drop
    -- out here.
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND notEmpty(zone_names)
)
WHERE server_zone = 'ot' AND client_zone != 'ot'
GROUP BY vessel, client_ip, client_zone, server_ip, server_zone, server_port, app_protocol
ORDER BY first_at, vessel, client_ip
