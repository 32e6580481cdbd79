-- OT write, control and program operations from hosts that are not known
-- engineering stations: known are the addresses the sensors reported in that
-- role before the window (a sensor gives the role to any host that writes, so
-- a newcomer writing today is not "known"), plus those given with
-- --engineering-host.
SELECT
    vessel, client_ip, server_ip, server_port, app_protocol,
    groupUniqArrayArray(op_names) AS operations,
    count() AS flows,
    min(first_seen) AS first_at
FROM flows_raw FINAL
WHERE first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
  AND ({vessel} = '' OR vessel = {vessel})
  AND hasAny(op_classes, ['write', 'control', 'program'])
  AND NOT has({engineering_hosts}, client_ip)
  AND (vessel, client_ip) GLOBAL NOT IN (
      SELECT vessel, arrayJoin(ips) FROM assets
      WHERE has(roles, 'engineering_station') AND last_seen_us < {since} * 1000000)
GROUP BY vessel, client_ip, server_ip, server_port, app_protocol
ORDER BY first_at, vessel, client_ip
