-- Claims take pending events oldest first (`ORDER BY id ... LIMIT`) and failed ones once their
-- retry is due, so each gets an index in that order, and a claim reads the claimable events
-- alone: not every event by primary key (which the planner chose under the old key, since
-- (state, next_attempt_at) could not give id order), and not every failed event still waiting
-- for its retry, however many an outage left behind.
-- The new indexes are built before the old one is dropped: the build blocks writes to events
-- but not reads, and the drop's exclusive lock lasts only until this migration commits.
CREATE INDEX events_pending ON events (id) WHERE state = 'pending';
CREATE INDEX events_retry ON events (next_attempt_at, id) WHERE state = 'failed';
DROP INDEX events_open;
