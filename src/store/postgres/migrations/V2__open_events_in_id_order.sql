-- Claims take the oldest open events first (`ORDER BY id ... LIMIT`), so the open events are
-- indexed in id order: a claim reads them alone, oldest first, and stops at its limit. Keyed
-- on (state, next_attempt_at), the index could not give that order and the planner walked the
-- primary key instead, through every event in the table, on every claim.
DROP INDEX events_open;
CREATE INDEX events_open ON events (id) WHERE state IN ('pending', 'failed');
