-- Bandwidth per zone and hour: bytes both ways of the flows that begin in
-- the hour, counted for the zone of the vessel-side end (the client's
-- zone, or the server's when the client is outside), and whether the hour
-- exceeds the threshold.
SELECT
    zone, hour, sum(c2s_bytes + s2c_bytes) AS bytes,
    sum(c2s_bytes + s2c_bytes) > {zone_hour_bytes} AS exceeds
FROM
(
    SELECT
        toStartOfHour(first_seen) AS hour, c2s_bytes, s2c_bytes,
        arrayFirstIndex((n, m) -> bitAnd(IPv4StringToNum(client_ip), m) = n, zone_nets, zone_masks) AS ci,
        arrayFirstIndex((n, m) -> bitAnd(IPv4StringToNum(server_ip), m) = n, zone_nets, zone_masks) AS si,
        multiIf(ci != 0, zone_names[ci], si != 0, zone_names[si], 'outside') AS zone
    FROM flows_raw FINAL
    GLOBAL ANY LEFT JOIN
    (
        SELECT sensor_id, zone_names, zone_nets, zone_masks
        FROM fleet_registry
        WHERE active = 1 AND notEmpty(zone_names)
    ) AS r USING (sensor_id)
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND vessel = {vessel} AND notEmpty(zone_names)
      AND position(client_ip, ':') = 0 AND position(server_ip, ':') = 0
)
GROUP BY zone, hour
ORDER BY zone, hour
