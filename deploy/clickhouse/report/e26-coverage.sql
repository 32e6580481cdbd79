-- Monitoring coverage per sensor: its status reports in the window (one
-- per batch it sent), the hours with at least one, the longest silence
-- (between two reports, or between the window's edges and the first or
-- last), the silences longer than {silence_s} seconds, and what it
-- reported losing: capture drops, records dropped by policy, batches held
-- set aside (the largest value reported; the counters run since the
-- sensor started).
SELECT
    sensor_id, reports, hours_reporting, first_report, last_report, longest_gap_s, silences,
    capture_packets, capture_drops, records_dropped, batches_set_aside, software_version
FROM
(
SELECT
    *,
    arrayConcat([toInt64({since}) * 1000000], t, [toInt64({until}) * 1000000]) AS ts,
    arrayMap(i -> ts[i + 1] - ts[i], arrayEnumerate(arraySlice(ts, 1, length(ts) - 1))) AS gaps,
    intDiv(arrayReduce('max', gaps), 1000000) AS longest_gap_s,
    arrayReduce('sum', arrayMap(g -> g > {silence_s} * 1000000, gaps)) AS silences
FROM
(
    SELECT
        sensor_id,
        count() AS reports,
        uniqExact(toStartOfHour(observed_at)) AS hours_reporting,
        toDateTime(intDiv(min(observed_us), 1000000)) AS first_report,
        toDateTime(intDiv(max(observed_us), 1000000)) AS last_report,
        arraySort(groupArray(observed_us)) AS t,
        max(capture_packets) AS capture_packets,
        max(capture_drops) AS capture_drops,
        max(records_dropped) AS records_dropped,
        max(batches_set_aside) AS batches_set_aside,
        argMax(software_version, observed_us) AS software_version
    FROM sensor_status
    WHERE vessel = {vessel} AND observed_us >= {since} * 1000000 AND observed_us < {until} * 1000000
    GROUP BY sensor_id
)
)
ORDER BY sensor_id
