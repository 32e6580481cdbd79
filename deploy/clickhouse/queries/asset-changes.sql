-- New assets, changed vendors and changed firmware: addresses first
-- observed in the window; known addresses now answering with a vendor (MAC)
-- not seen for them in the baseline; and devices that, in the window,
-- report a firmware (from their own device identification replies) other
-- than the one they reported before it (at any time: a device reports its
-- identity again only when something about it changes).
SELECT
    vessel, ip,
    multiIf(
        first_us >= {since} * 1000000, 'new_asset',
        arrayExists(v -> NOT has(old_vendors, v), new_vendors), 'vendor_changed',
        'firmware_changed') AS change,
    old_vendors, new_vendors, old_firmware, new_firmware,
    toDateTime(intDiv(if(first_us >= {since} * 1000000 OR firmware_us = 0, first_us, firmware_us), 1000000)) AS first_at
FROM
(
    SELECT
        vessel, ip,
        minIf(first_seen_us, by_first) AS first_us,
        groupUniqArrayIf(vendor, by_first AND first_seen_us < {since} * 1000000) AS old_vendors,
        groupUniqArrayIf(vendor, by_first AND first_seen_us >= {since} * 1000000) AS new_vendors,
        groupUniqArrayIf(firmware, firmware != '' AND last_seen_us < {since} * 1000000) AS old_firmware,
        groupUniqArrayIf(firmware, firmware != '' AND last_seen_us >= {since} * 1000000) AS new_firmware,
        minIf(last_seen_us, firmware != '' AND last_seen_us >= {since} * 1000000) AS firmware_us
    FROM
    (
        SELECT vessel, arrayJoin(ips) AS ip, vendor, first_seen_us, last_seen_us, firmware,
               first_seen_us >= {baseline_since} * 1000000 AS by_first
        FROM assets
        WHERE first_seen_us < {until} * 1000000
          AND (last_seen_us >= {baseline_since} * 1000000 OR firmware != '')
          AND ({vessel} = '' OR vessel = {vessel})
    )
    GROUP BY vessel, ip
)
WHERE (first_us >= {since} * 1000000 AND first_us < {until} * 1000000)
   OR arrayExists(v -> NOT has(old_vendors, v), new_vendors)
   OR (notEmpty(old_firmware) AND arrayExists(f -> NOT has(old_firmware, f), new_firmware))
ORDER BY first_at, vessel, ip
