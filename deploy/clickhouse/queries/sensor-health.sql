-- Sensor health: sensors silent for {silence_s} s before the end of the
-- window (seen since the baseline start), with a growing backlog (at least
-- {min_backlog} records and rising), records dropped by policy, batches
-- refused by the collector and held set aside on the sensor, or the daily
-- byte budget used up, in the window.
SELECT sensor_id, vessel_of AS vessel, last_report, problems,
       backlog_first, backlog_last, dropped, capture_drops, set_aside, set_aside_reason
FROM
(
    SELECT
        sensor_id,
        any(vessel) AS vessel_of,
        max(observed_at) AS last_report,
        argMinIf(buffer_backlog_records, observed_us, observed_at >= toDateTime({since})) AS backlog_first,
        argMaxIf(buffer_backlog_records, observed_us, observed_at >= toDateTime({since})) AS backlog_last,
        maxIf(records_dropped, observed_at >= toDateTime({since})) AS dropped,
        maxIf(capture_drops, observed_at >= toDateTime({since})) AS capture_drops,
        argMaxIf(records_set_aside, observed_us, observed_at >= toDateTime({since})) AS set_aside,
        argMaxIf(set_aside_reason, observed_us, observed_at >= toDateTime({since})) AS set_aside_reason,
        maxIf(daily_byte_budget > 0 AND bytes_sent_today >= daily_byte_budget,
              observed_at >= toDateTime({since})) AS budget_hit,
        arrayFilter(p -> p != '', [
            if(toUInt32(max(observed_at)) + {silence_s} < {until}, 'silent', ''),
            if(backlog_last >= {min_backlog} AND backlog_last > backlog_first, 'backlog', ''),
            if(dropped > 0, 'drops', ''),
            if(capture_drops > 0, 'capture_drops', ''),
            if(set_aside > 0, 'set_aside', ''),
            if(budget_hit, 'budget', '')]) AS problems
    FROM sensor_status
    WHERE observed_at >= toDateTime({baseline_since}) AND observed_at < toDateTime({until})
      AND ({vessel} = '' OR vessel = {vessel})
    GROUP BY sensor_id
)
WHERE notEmpty(problems)
ORDER BY sensor_id
