-- Beaconing: a host contacting the same external destination and port at
-- least {min_count} times in the window at a regular period (standard
-- deviation of the gaps at most {max_jitter} of their mean, mean at least
-- {min_period_s} s) with near-constant sizes (coefficient of variation at
-- most {max_size_cv}).
SELECT
    vessel, client_ip, server_ip, server_port, n AS connections,
    round(period_us / 1000000, 1) AS period_s,
    round(gap_sd / period_us, 3) AS jitter,
    round(size_mean) AS bytes_mean,
    round(size_sd / size_mean, 3) AS size_cv,
    first_at, last_at
FROM
(
    SELECT
        vessel, client_ip, server_ip, server_port,
        count() AS n,
        arraySort(groupArray(first_seen_us)) AS ts,
        arrayPopFront(arrayDifference(ts)) AS gaps,
        arrayReduce('avg', gaps) AS period_us,
        arrayReduce('stddevPop', gaps) AS gap_sd,
        avg(c2s_bytes + s2c_bytes) AS size_mean,
        stddevPop(c2s_bytes + s2c_bytes) AS size_sd,
        min(first_seen) AS first_at,
        max(first_seen) AS last_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND ((position(server_ip, ':') = 0 AND NOT (
              bitAnd(IPv4StringToNum(server_ip), 4278190080) IN (0, 167772160, 2130706432)
              OR bitAnd(IPv4StringToNum(server_ip), 4293918720) = 2886729728
              OR bitAnd(IPv4StringToNum(server_ip), 4294901760) IN (3232235520, 2851995648)
              OR IPv4StringToNum(server_ip) >= 3758096384))
           OR (position(server_ip, ':') > 0 AND NOT match(lower(server_ip), '^(fe[89ab]|fc|fd|ff|::1$)')))
    GROUP BY vessel, client_ip, server_ip, server_port
    HAVING n >= {min_count}
)
WHERE period_us >= {min_period_s} * 1000000
  AND gap_sd <= {max_jitter} * period_us
  AND size_sd <= {max_size_cv} * size_mean
ORDER BY jitter, vessel, client_ip
