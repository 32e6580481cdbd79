-- Fleet-wide campaigns: an external destination no vessel contacted in the
-- baseline, first contacted in the window by at least {min_vessels}
-- vessels within {spread_s} seconds of each other.
SELECT
    server_ip,
    uniqExact(vessel) AS vessels,
    groupUniqArray(vessel) AS vessel_list,
    min(first_contact) AS first_at,
    max(first_contact) AS last_first_contact
FROM
(
    SELECT vessel, server_ip, min(first_seen) AS first_contact
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ((position(server_ip, ':') = 0 AND NOT (
              bitAnd(IPv4StringToNum(server_ip), 4278190080) IN (0, 167772160, 2130706432)
              OR bitAnd(IPv4StringToNum(server_ip), 4293918720) = 2886729728
              OR bitAnd(IPv4StringToNum(server_ip), 4294901760) IN (3232235520, 2851995648)
              OR IPv4StringToNum(server_ip) >= 3758096384))
           OR (position(server_ip, ':') > 0 AND NOT match(lower(server_ip), '^(fe[89ab]|fc|fd|ff|::1$)')))
      AND server_ip GLOBAL NOT IN (
          SELECT server_ip FROM dest_hourly_raw
          WHERE hour >= toDateTime({baseline_since}) AND hour < toStartOfHour(toDateTime({since}))
          UNION ALL
          SELECT server_ip FROM flows_raw
          WHERE first_seen_us >= toUInt64(toStartOfHour(toDateTime({since}))) * 1000000
            AND first_seen_us < {since} * 1000000)
    GROUP BY vessel, server_ip
)
GROUP BY server_ip
HAVING vessels >= {min_vessels}
   AND toUInt32(max(first_contact)) - toUInt32(min(first_contact)) <= {spread_s}
ORDER BY vessels DESC, server_ip
