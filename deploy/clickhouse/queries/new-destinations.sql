-- New external destinations per vessel: public addresses a vessel contacted
-- in the window and never in the baseline before it.
SELECT
    vessel,
    server_ip,
    min(first_seen) AS first_at,
    groupUniqArray(server_port) AS ports,
    uniqExact(client_ip) AS clients,
    count() AS flows,
    sum(c2s_bytes) AS bytes_out
FROM flows_raw FINAL
WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
  AND ({vessel} = '' OR vessel = {vessel})
  AND ((position(server_ip, ':') = 0 AND NOT (
          bitAnd(IPv4StringToNum(server_ip), 4278190080) IN (0, 167772160, 2130706432)
          OR bitAnd(IPv4StringToNum(server_ip), 4293918720) = 2886729728
          OR bitAnd(IPv4StringToNum(server_ip), 4294901760) IN (3232235520, 2851995648)
          OR IPv4StringToNum(server_ip) >= 3758096384))
       OR (position(server_ip, ':') > 0 AND NOT match(lower(server_ip), '^(fe[89ab]|fc|fd|ff|::1$)')))
  AND (vessel, server_ip) GLOBAL NOT IN (
      SELECT vessel, server_ip FROM dest_hourly_raw
      WHERE hour >= toDateTime({baseline_since}) AND hour < toStartOfHour(toDateTime({since}))
      UNION ALL
      SELECT vessel, server_ip FROM flows_raw
      WHERE first_seen_us >= toUInt64(toStartOfHour(toDateTime({since}))) * 1000000
        AND first_seen_us < {since} * 1000000)
GROUP BY vessel, server_ip
ORDER BY first_at, vessel, server_ip
