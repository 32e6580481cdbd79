-- Alarms raised for the vessel in the window (the detection service), and
-- how each was handled: its state (open, acknowledged, resolved, ...),
-- by whom and with what note.
SELECT id, rule, severity, sensor_id, subject, summary, raised_at, state, state_by, state_note
FROM alerts
WHERE vessel = {vessel} AND first_seen_us >= {since} * 1000000 AND first_seen_us < {until} * 1000000
ORDER BY raised_at, rule, subject
