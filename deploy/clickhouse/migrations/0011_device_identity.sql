-- tidewatch schema, version 11: device identity from the wire.
-- Sensors read what a device says about itself in its own replies (Modbus
-- Read Device Identification, EtherNet/IP ListIdentity, S7 SZL) and the
-- banners it sends (SSH version lines, HTTP Server headers), and report them
-- on the asset: maker, product, firmware and serial as the device gave them,
-- the protocol that told, and its software banners. Empty where the device
-- never said. The asset views carry them; `assets_latest` keeps the latest
-- value of each.
--
-- Placeholders: {{db}} database.

-- @modern
ALTER TABLE {{db}}.assets_raw
    ADD COLUMN IF NOT EXISTS device_vendor String,
    ADD COLUMN IF NOT EXISTS product String,
    ADD COLUMN IF NOT EXISTS firmware String,
    ADD COLUMN IF NOT EXISTS serial String,
    ADD COLUMN IF NOT EXISTS identity_protocol String,
    ADD COLUMN IF NOT EXISTS software Array(String);
-- @end
-- @legacy
ALTER TABLE {{db}}.assets_raw
    ADD COLUMN device_vendor String,
    ADD COLUMN product String,
    ADD COLUMN firmware String,
    ADD COLUMN serial String,
    ADD COLUMN identity_protocol String,
    ADD COLUMN software Array(String);
-- @end

DROP TABLE IF EXISTS {{db}}.assets;

CREATE VIEW IF NOT EXISTS {{db}}.assets AS
SELECT
    sensor_id, vessel, batch_seq, record_idx, received_at, mac, ips, vendor,
    first_seen_us, last_seen_us, first_seen, last_seen, protocols, roles,
    device_vendor, product, firmware, serial, identity_protocol, software
FROM {{db}}.assets_raw FINAL;

DROP TABLE IF EXISTS {{db}}.assets_latest;

-- The latest state of each asset (one row per vessel and address); each
-- identity field is the latest non-empty value the device gave.
CREATE VIEW IF NOT EXISTS {{db}}.assets_latest AS
SELECT
    vessel, ip,
    argMax(m, ls) AS mac,
    argMax(v, ls) AS vendor,
    min(fs) AS first_seen_us,
    max(ls) AS last_seen_us,
    groupUniqArrayArray(pr) AS protocols,
    groupUniqArrayArray(ro) AS roles,
    any(sid) AS sensor_id,
    argMaxIf(dv, ls, dv != '') AS device_vendor,
    argMaxIf(pd, ls, pd != '') AS product,
    argMaxIf(fw, ls, fw != '') AS firmware,
    argMaxIf(sn, ls, sn != '') AS serial,
    argMaxIf(ip_, ls, ip_ != '') AS identity_protocol,
    groupUniqArrayArray(sw) AS software
FROM
(
    SELECT vessel, sensor_id AS sid, arrayJoin(ips) AS ip, mac AS m, vendor AS v,
           first_seen_us AS fs, last_seen_us AS ls, protocols AS pr, roles AS ro,
           device_vendor AS dv, product AS pd, firmware AS fw, serial AS sn,
           identity_protocol AS ip_, software AS sw
    FROM {{db}}.assets_raw FINAL
)
GROUP BY vessel, ip;
