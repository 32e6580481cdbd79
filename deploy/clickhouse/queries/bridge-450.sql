-- IEC 61162-450 bridge network findings, per vessel (the sensor counts the
-- 450 framing of each flow as operations: `udpbc` datagrams, `tag_block`
-- with bad or missing checksums as errors, `source:SFI` per TAG block
-- source identifier, `binary_image_*` transfers):
--   bad_tag_checksum      TAG blocks whose checksum is wrong or missing;
--   sfi_conflict          one source identifier (SFI) sent by two or more
--                         nodes, one row per node;
--   wrong_group           target sentences (AIS VDM/VDO, radar TTM/TTD/
--                         TLL/TLB) sent to a transmission group other than
--                         TGTD (239.192.0.2);
--   non_450_in_reserved   traffic that is not 61162-450 sent into the
--                         reserved multicast range 239.192.0.1-.64;
--   outside_450_network   61162-450 traffic from a node outside
--                         172.16.0.0/12;
--   binary_transfer       binary image transfers (RaUdP, RrUdP, RpUdP), as
--                         evidence rather than a fault.
-- The transmission groups 239.192.0.1-.16 are MISC, TGTD, SATD, NAVD,
-- VDRD, RCOM, TIME, PROP and USR1-USR8, in that order.
SELECT vessel, finding, client_ip, server_ip, server_port, detail, flows, first_at
FROM
(
    SELECT
        vessel, 'bad_tag_checksum' AS finding, client_ip, server_ip, server_port,
        concat(toString(sum(arraySum(arrayFilter((e, n) -> n = 'tag_block', op_errors, op_names)))),
               ' TAG blocks with a bad or missing checksum') AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND app_protocol = 'nmea0183'
      AND arrayExists((e, n) -> n = 'tag_block' AND e > 0, op_errors, op_names)
    GROUP BY vessel, client_ip, server_ip, server_port

    UNION ALL

    SELECT
        vessel, 'sfi_conflict' AS finding, client_ip, any(server_ip) AS server_ip,
        any(server_port) AS server_port, substring(sfi, 8) AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM
    (
        SELECT vessel, client_ip, server_ip, server_port, first_seen,
               arrayJoin(arrayFilter(n -> startsWith(n, 'source:'), op_names)) AS sfi
        FROM flows_raw FINAL
        WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
          AND ({vessel} = '' OR vessel = {vessel})
          AND app_protocol = 'nmea0183'
    )
    WHERE (vessel, sfi) GLOBAL IN
    (
        SELECT vessel, sfi
        FROM
        (
            SELECT vessel, client_ip,
                   arrayJoin(arrayFilter(n -> startsWith(n, 'source:'), op_names)) AS sfi
            FROM flows_raw FINAL
            WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
              AND ({vessel} = '' OR vessel = {vessel})
              AND app_protocol = 'nmea0183'
        )
        GROUP BY vessel, sfi
        HAVING uniqExact(client_ip) > 1
    )
    GROUP BY vessel, client_ip, sfi

    UNION ALL

    SELECT
        vessel, 'wrong_group' AS finding, client_ip, server_ip, server_port,
        concat('target sentences in ',
               ['MISC', 'TGTD', 'SATD', 'NAVD', 'VDRD', 'RCOM', 'TIME', 'PROP',
                'USR1', 'USR2', 'USR3', 'USR4', 'USR5', 'USR6', 'USR7', 'USR8']
               [IPv4StringToNum(server_ip) - 4022337536]) AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND app_protocol = 'nmea0183' AND position(server_ip, ':') = 0
      AND IPv4StringToNum(server_ip) BETWEEN 4022337537 AND 4022337552
      AND server_ip != '239.192.0.2'
      AND arrayExists(n -> match(n, '^[A-Z][A-Z](VDM|VDO|TTM|TTD|TLL|TLB)$'), op_names)
    GROUP BY vessel, client_ip, server_ip, server_port

    UNION ALL

    SELECT
        vessel, 'non_450_in_reserved' AS finding, client_ip, server_ip, server_port,
        concat('app protocol ', if(app_protocol = '', 'unknown', toString(app_protocol))) AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND position(server_ip, ':') = 0
      AND IPv4StringToNum(server_ip) BETWEEN 4022337537 AND 4022337600
      AND NOT arrayExists(n -> n = 'udpbc' OR startsWith(n, 'binary_image_'), op_names)
    GROUP BY vessel, client_ip, server_ip, server_port, app_protocol

    UNION ALL

    SELECT
        vessel, 'outside_450_network' AS finding, client_ip, server_ip, server_port,
        'sender outside 172.16.0.0/12' AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND app_protocol = 'nmea0183'
      AND arrayExists(n -> n = 'udpbc' OR startsWith(n, 'binary_image_'), op_names)
      AND (position(client_ip, ':') > 0
           OR bitAnd(IPv4StringToNum(client_ip), 4293918720) != 2886729728)
    GROUP BY vessel, client_ip, server_ip, server_port

    UNION ALL

    SELECT
        vessel, 'binary_transfer' AS finding, client_ip, server_ip, server_port,
        arrayStringConcat(groupUniqArrayArray(
            arrayFilter(n -> startsWith(n, 'binary_image_'), op_names)), ' ') AS detail,
        count() AS flows, min(first_seen) AS first_at
    FROM flows_raw FINAL
    WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
      AND ({vessel} = '' OR vessel = {vessel})
      AND app_protocol = 'nmea0183'
      AND arrayExists(n -> startsWith(n, 'binary_image_'), op_names)
    GROUP BY vessel, client_ip, server_ip, server_port
)
ORDER BY first_at, vessel, finding, client_ip
