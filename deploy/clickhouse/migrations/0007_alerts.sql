-- tidewatch schema, version 7: alerts and their handling.
-- An alert's id is deterministic (rule, vessel, subject, time bucket), so a
-- detector restarted, re-run over the same batches, or running twice
-- raises it once: copies collapse here, and the view reads FINAL. Of the
-- copies, the one with the earliest evidence is kept (evidence_rank grows
-- as first_seen_us falls), whatever order they were written in.
-- What was done about an alert (acknowledged, closed, suppressed, reopened:
-- who, when, a note) is appended to alert_history and never overwritten:
-- the record of investigation a class survey asks for.
--
-- Placeholders: {{db}} database, {{string_lc}}.
CREATE TABLE IF NOT EXISTS {{db}}.alerts_raw
(
    id String,
    rule {{string_lc}},
    severity {{string_lc}},
    vessel {{string_lc}},
    sensor_id {{string_lc}},
    subject String,
    bucket_start DateTime,
    first_seen_us Int64,
    summary String,
    evidence String,
    raised_at DateTime,
    evidence_rank UInt64
)
ENGINE = ReplacingMergeTree(evidence_rank)
PARTITION BY toYYYYMM(bucket_start)
ORDER BY id;

CREATE TABLE IF NOT EXISTS {{db}}.alert_history
(
    id String,
    at_us Int64,
    action {{string_lc}},
    who String,
    note String
)
ENGINE = MergeTree
ORDER BY (id, at_us);

CREATE VIEW IF NOT EXISTS {{db}}.alerts AS
SELECT
    id, rule, severity, vessel, sensor_id, subject, bucket_start, first_seen_us,
    summary, evidence, raised_at,
    multiIf(last_action IN ('', 'reopened'), 'open', last_action) AS state,
    last_by AS state_by, last_note AS state_note, last_at_us AS state_at_us
FROM (SELECT * FROM {{db}}.alerts_raw FINAL) AS a
ANY LEFT JOIN
(
    SELECT id,
        argMax(action, at_us) AS last_action,
        argMax(who, at_us) AS last_by,
        argMax(note, at_us) AS last_note,
        max(at_us) AS last_at_us
    FROM {{db}}.alert_history
    GROUP BY id
) AS h USING id;
