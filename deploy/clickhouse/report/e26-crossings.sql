-- Zone crossings: connections between two zones of the vessel, or between
-- a zone and outside it, by direction, server port and protocol, with
-- their volume and first and last time. Multicast and broadcast
-- destinations outside every zone are not crossings. Whether a conduit of
-- the registry allows each is judged against the conduits listed with the
-- sensors (from, to, ports, protocols).
SELECT
    client_zone, server_zone, server_port, app_protocol,
    count() AS flows,
    uniqExact(client_ip) AS clients,
    uniqExact(server_ip) AS servers,
    sum(c2s_bytes + s2c_bytes) AS bytes,
    toDateTime(intDiv(min(first_seen_us), 1000000)) AS first_at,
    toDateTime(intDiv(max(last_seen_us), 1000000)) AS last_at
FROM
(
    SELECT
        client_ip, server_ip, server_port, app_protocol, first_seen_us, last_seen_us,
        c2s_bytes, s2c_bytes,
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
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND vessel = {vessel} AND notEmpty(zone_names)
      AND position(client_ip, ':') = 0 AND position(server_ip, ':') = 0
)
WHERE client_zone != server_zone
  AND NOT (server_zone = 'outside'
           AND (IPv4StringToNum(server_ip) >= 3758096384 OR bitAnd(IPv4StringToNum(server_ip), 255) = 255))
GROUP BY client_zone, server_zone, server_port, app_protocol
ORDER BY client_zone, server_zone, server_port, app_protocol
