-- New assets and changed vendors: addresses first observed in the window,
-- and known addresses now answering with a vendor (MAC) not seen for them
-- in the baseline.
SELECT
    vessel, ip,
    if(first_us >= {since} * 1000000, 'new_asset', 'vendor_changed') AS change,
    old_vendors, new_vendors,
    toDateTime(intDiv(first_us, 1000000)) AS first_at
FROM
(
    SELECT
        vessel, ip,
        min(first_seen_us) AS first_us,
        groupUniqArrayIf(vendor, first_seen_us < {since} * 1000000) AS old_vendors,
        groupUniqArrayIf(vendor, first_seen_us >= {since} * 1000000) AS new_vendors
    FROM
    (
        SELECT vessel, arrayJoin(ips) AS ip, vendor, first_seen_us
        FROM assets
        WHERE first_seen_us >= {baseline_since} * 1000000 AND first_seen_us < {until} * 1000000
          AND ({vessel} = '' OR vessel = {vessel})
    )
    GROUP BY vessel, ip
)
WHERE first_us >= {since} * 1000000
   OR arrayExists(v -> NOT has(old_vendors, v), new_vendors)
ORDER BY first_at, vessel, ip
