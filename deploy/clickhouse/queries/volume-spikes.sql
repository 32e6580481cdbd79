-- Outbound volume spikes: hours (starting in the window) where a vessel
-- sent a destination at least {min_bytes} bytes and more than {sigmas}
-- standard deviations above that destination's hourly mean in the baseline
-- (a destination without a baseline counts from zero). Reads the hourly
-- rollup (dest_hourly_raw, summed over FINAL: every flow once). The
-- baseline is computed only for the destinations of the window's candidate
-- hours (at least {min_bytes}): the hourly series of every destination of a
-- fleet over weeks is what made this query the slowest of the pack.
SELECT
    vessel,
    server_ip,
    hour,
    bytes_out,
    round(baseline_mean) AS baseline_mean,
    round(baseline_stddev) AS baseline_stddev,
    baseline_hours
FROM
(
    SELECT vessel, server_ip, hour, sum(c2s_bytes) AS bytes_out
    FROM dest_hourly_raw FINAL
    WHERE hour >= toDateTime({since}) AND hour < toDateTime({until})
      AND ({vessel} = '' OR vessel = {vessel})
    GROUP BY vessel, server_ip, hour
    HAVING bytes_out >= {min_bytes}
) AS w
ANY LEFT JOIN
(
    SELECT vessel, server_ip,
           avg(b) AS baseline_mean, stddevPop(b) AS baseline_stddev, count() AS baseline_hours
    FROM
    (
        SELECT vessel, server_ip, hour, sum(c2s_bytes) AS b
        FROM dest_hourly_raw FINAL
        WHERE hour >= toDateTime({baseline_since}) AND hour < toDateTime({since})
          AND ({vessel} = '' OR vessel = {vessel})
          AND (vessel, server_ip) GLOBAL IN (
              SELECT vessel, server_ip
              FROM dest_hourly_raw FINAL
              WHERE hour >= toDateTime({since}) AND hour < toDateTime({until})
                AND ({vessel} = '' OR vessel = {vessel})
              GROUP BY vessel, server_ip, hour
              HAVING sum(c2s_bytes) >= {min_bytes})
        GROUP BY vessel, server_ip, hour
    )
    GROUP BY vessel, server_ip
) AS b USING (vessel, server_ip)
WHERE bytes_out > baseline_mean + {sigmas} * baseline_stddev
ORDER BY bytes_out DESC, vessel, server_ip, hour
