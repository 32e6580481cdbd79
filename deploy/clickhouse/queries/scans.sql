-- Scans: one source reaching at least {min_targets} distinct address:port
-- pairs in the window, mostly with one or two packets each.
SELECT
    vessel, client_ip,
    uniqExact(server_ip, server_port) AS targets,
    uniqExact(server_ip) AS hosts,
    uniqExact(server_port) AS ports,
    count() AS flows,
    round(countIf(c2s_packets <= 2) / count(), 2) AS probe_share,
    min(first_seen) AS first_at,
    max(first_seen) AS last_at
FROM flows_raw FINAL
WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
  AND ({vessel} = '' OR vessel = {vessel})
GROUP BY vessel, client_ip
HAVING targets >= {min_targets} AND probe_share >= 0.5
ORDER BY targets DESC, vessel, client_ip
