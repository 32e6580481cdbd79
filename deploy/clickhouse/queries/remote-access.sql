-- Remote-access sessions into a vessel's OT or navigation zone from outside
-- that zone (ashore, or another zone of the vessel): who, from where, to
-- what, when, for how long and how many bytes (IACS UR E26 §4.2.6 asks that
-- remote access be recorded). The protocols are the ones the sensor names
-- by payload on any port: SSH, RDP, VNC and Telnet. A session is one connection
-- (the 5-tuple): a connection longer than the sensor's active timeout
-- arrives as several flow records and is summed here. Zones come from the
-- fleet registry (IPv4 CIDRs per sensor); an address in no zone is
-- 'outside'.
SELECT
    vessel, client_ip, client_zone, server_ip, server_zone, server_port, app_protocol,
    count() AS records,
    toDateTime(intDiv(min(first_seen_us), 1000000)) AS first_at,
    toDateTime(intDiv(max(last_seen_us), 1000000)) AS last_at,
    intDiv(max(last_seen_us) - min(first_seen_us), 1000000) AS duration_s,
    sum(c2s_bytes) AS bytes_to_server,
    sum(s2c_bytes) AS bytes_to_client
FROM
(
    SELECT
        vessel, client_ip, client_port, server_ip, server_port, app_protocol,
        first_seen_us, last_seen_us, c2s_bytes, s2c_bytes,
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
    -- ANY LEFT JOIN, not ANY INNER JOIN (see segmentation.sql).
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND app_protocol IN ('ssh', 'rdp', 'vnc', 'telnet')
      AND notEmpty(zone_names)
)
WHERE server_zone IN ('ot', 'nav') AND client_zone != server_zone
GROUP BY vessel, client_ip, client_port, client_zone, server_ip, server_zone, server_port, app_protocol
ORDER BY first_at, vessel, client_ip
