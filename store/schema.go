package store

import (
	"context"
	"database/sql"
	"fmt"
)

// migrations are applied in order; the index+1 is the schema version.
// Never edit a released migration: append a new one.
var migrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE accounts (
	id                  INTEGER PRIMARY KEY,
	name                TEXT NOT NULL UNIQUE COLLATE NOCASE,
	password_hash       TEXT NOT NULL DEFAULT '',
	state               TEXT NOT NULL CHECK (state IN ('capturing', 'cutover', 'captured')),
	state_changed_at    INTEGER NOT NULL,
	created_at          INTEGER NOT NULL,
	legacy_prefix       TEXT NOT NULL DEFAULT '',
	legacy_separator    TEXT NOT NULL DEFAULT '/',
	special_use_guessed INTEGER NOT NULL DEFAULT 0,
	legacy_messages     INTEGER NOT NULL DEFAULT 0,
	legacy_bytes        INTEGER NOT NULL DEFAULT 0,
	capture_started_at  INTEGER NOT NULL DEFAULT 0,
	last_sync_at        INTEGER NOT NULL DEFAULT 0,
	captured_at         INTEGER NOT NULL DEFAULT 0,
	last_error          TEXT NOT NULL DEFAULT ''
);

CREATE TABLE mailboxes (
	id                 INTEGER PRIMARY KEY,
	account_id         INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
	name               TEXT NOT NULL,
	uidvalidity        INTEGER NOT NULL CHECK (uidvalidity > 0),
	uidnext            INTEGER NOT NULL CHECK (uidnext > 0),
	special_use        TEXT NOT NULL DEFAULT '',
	subscribed         INTEGER NOT NULL DEFAULT 0,
	legacy_uidvalidity INTEGER NOT NULL DEFAULT 0,
	-- the legacy UIDNEXT last synced: follow syncs copy from there on
	legacy_uidnext     INTEGER NOT NULL DEFAULT 0,
	UNIQUE (account_id, name)
);

CREATE TABLE messages (
	id            INTEGER PRIMARY KEY,
	mailbox_id    INTEGER NOT NULL REFERENCES mailboxes(id),
	uid           INTEGER NOT NULL,
	legacy_uid    INTEGER,
	internal_date INTEGER NOT NULL,
	internal_tz   INTEGER NOT NULL,
	size          INTEGER NOT NULL,
	flags         TEXT NOT NULL DEFAULT '',
	pop3_uidl     TEXT,
	sha256        BLOB NOT NULL,
	message_id    TEXT NOT NULL DEFAULT '',
	structure     BLOB NOT NULL,
	UNIQUE (mailbox_id, uid),
	UNIQUE (mailbox_id, legacy_uid)
);
CREATE INDEX messages_message_id ON messages (mailbox_id, message_id);
-- RFC 1939: a UIDL names one message of a maildrop. Also what makes a
-- POP3 capture idempotent.
CREATE UNIQUE INDEX messages_pop3_uidl ON messages (mailbox_id, pop3_uidl);

CREATE TABLE spool (
	id              INTEGER PRIMARY KEY,
	route           TEXT NOT NULL CHECK (route IN ('legacy', 'hold')),
	account_id      INTEGER REFERENCES accounts(id),
	sender          TEXT NOT NULL,
	recipients      TEXT NOT NULL,
	size            INTEGER NOT NULL,
	sha256          BLOB NOT NULL,
	message_id      TEXT NOT NULL DEFAULT '',
	structure       BLOB NOT NULL,
	received_at     INTEGER NOT NULL,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL,
	last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX spool_due ON spool (route, next_attempt_at);

-- Body files whose rows are gone; removed after the deleting commit, and
-- again at start-up if a crash came in between.
CREATE TABLE unlink_queue (
	blob_id INTEGER PRIMARY KEY
);

-- Blob ids are reserved in ranges, so an id is never given twice, even
-- after a crash. Every id up to settled_up_to has its file committed or
-- removed; ids above it may have files of unfinished writes, which Open
-- checks and removes.
CREATE TABLE blob_ids (
	reserved_up_to INTEGER NOT NULL,
	settled_up_to  INTEGER NOT NULL
);
INSERT INTO blob_ids VALUES (0, 0);
`,
	// 2: who logs in, over which protocol (all modes; the forecast of
	// shadow mode).
	`
CREATE TABLE logins (
	account  TEXT NOT NULL COLLATE NOCASE,
	protocol TEXT NOT NULL,
	first_at INTEGER NOT NULL,
	last_at  INTEGER NOT NULL,
	count    INTEGER NOT NULL,
	PRIMARY KEY (account, protocol)
);
`,
	// 3: spool actions asked for by `mailcapture queue` beside a running
	// server.
	`
ALTER TABLE spool ADD COLUMN drop_requested INTEGER NOT NULL DEFAULT 0;
`,
	// 4: a forced cut-over asked for by ` + "`mailcapture cutover`" + `, and
	// store-wide settings (the legacy server's retirement).
	`
ALTER TABLE accounts ADD COLUMN cutover_requested INTEGER NOT NULL DEFAULT 0;
CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
`,
	// 5: the opt-in credential vault: legacy passwords sealed with the
	// admin's key (never in plain text).
	`
CREATE TABLE credentials (
	account    TEXT PRIMARY KEY COLLATE NOCASE,
	sealed     BLOB NOT NULL,
	updated_at INTEGER NOT NULL
);
`,
	// 6: what the legacy folder and its local mirror looked like when a
	// sync last finished it, so a delta pass can skip folders nothing
	// changed in.
	`
ALTER TABLE mailboxes ADD COLUMN legacy_state TEXT NOT NULL DEFAULT '';
`,
	// 7: subscriptions apart from mailboxes (RFC 3501 6.3.6: a name may be
	// subscribed whether or not a mailbox has it, and stays subscribed
	// when its mailbox is deleted); the first UID not yet given the
	// \Recent flag by a session; the highest UIDVALIDITY an account ever
	// gave, so a recreated name never gets an old one back.
	`
CREATE TABLE subscriptions (
	account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
	name       TEXT NOT NULL,
	PRIMARY KEY (account_id, name)
);
INSERT INTO subscriptions (account_id, name) SELECT account_id, name FROM mailboxes WHERE subscribed = 1;
ALTER TABLE mailboxes ADD COLUMN recent_uid INTEGER NOT NULL DEFAULT 1;
UPDATE mailboxes SET recent_uid = uidnext;
ALTER TABLE accounts ADD COLUMN uidvalidity_last INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET uidvalidity_last = coalesce((SELECT max(uidvalidity) FROM mailboxes WHERE account_id = accounts.id), 0);
`,
	// 8: the name the legacy server accepted for an account (captures log
	// in with it); every address mail was relayed to the legacy server
	// for; the addresses the legacy server's delivery trace headers show
	// mail reached an account's INBOX under.
	`
ALTER TABLE accounts ADD COLUMN legacy_login TEXT NOT NULL DEFAULT '';
CREATE TABLE relayed_recipients (
	address  TEXT PRIMARY KEY COLLATE NOCASE,
	first_at INTEGER NOT NULL,
	last_at  INTEGER NOT NULL,
	count    INTEGER NOT NULL
);
CREATE INDEX relayed_recipients_last ON relayed_recipients(last_at);
CREATE TABLE trace_addresses (
	account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
	address    TEXT NOT NULL COLLATE NOCASE,
	first_at   INTEGER NOT NULL,
	last_at    INTEGER NOT NULL,
	count      INTEGER NOT NULL,
	PRIMARY KEY (account_id, address)
);
`,
	// 9: a third spool route, mail users submitted for other domains,
	// relayed to the outbound MTA (SQLite cannot change a CHECK: the
	// table is made again).
	`
CREATE TABLE spool_v9 (
	id              INTEGER PRIMARY KEY,
	route           TEXT NOT NULL CHECK (route IN ('legacy', 'hold', 'outbound')),
	account_id      INTEGER REFERENCES accounts(id),
	sender          TEXT NOT NULL,
	recipients      TEXT NOT NULL,
	size            INTEGER NOT NULL,
	sha256          BLOB NOT NULL,
	message_id      TEXT NOT NULL DEFAULT '',
	structure       BLOB NOT NULL,
	received_at     INTEGER NOT NULL,
	attempts        INTEGER NOT NULL DEFAULT 0,
	next_attempt_at INTEGER NOT NULL,
	last_error      TEXT NOT NULL DEFAULT '',
	drop_requested  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO spool_v9 (id, route, account_id, sender, recipients, size, sha256, message_id, structure, received_at, attempts, next_attempt_at, last_error, drop_requested)
	SELECT id, route, account_id, sender, recipients, size, sha256, message_id, structure, received_at, attempts, next_attempt_at, last_error, drop_requested FROM spool;
DROP TABLE spool;
ALTER TABLE spool_v9 RENAME TO spool;
CREATE INDEX spool_due ON spool (route, next_attempt_at);
`,
	// 10: each account's Sieve scripts, as the legacy ManageSieve server
	// kept them (byte-exact) or as the user stores them here; who each
	// vacation reply answered, when; what the capture found of them; the
	// last error of the active script.
	`
CREATE TABLE sieve_scripts (
	account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
	name       TEXT NOT NULL,
	script     BLOB NOT NULL,
	active     INTEGER NOT NULL DEFAULT 0,
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (account_id, name)
);
CREATE TABLE sieve_vacation (
	account_id INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
	handle     TEXT NOT NULL,
	sender     TEXT NOT NULL COLLATE NOCASE,
	sent_at    INTEGER NOT NULL,
	PRIMARY KEY (account_id, handle, sender)
);
ALTER TABLE accounts ADD COLUMN sieve_source TEXT NOT NULL DEFAULT '';
ALTER TABLE accounts ADD COLUMN sieve_error TEXT NOT NULL DEFAULT '';
`,
	// 11: each account's stored messages and bytes, kept by triggers as
	// messages come, go and move, so that the status report and the
	// metrics cost the same at a million messages as at a thousand.
	`
CREATE TABLE account_totals (
	account_id INTEGER PRIMARY KEY REFERENCES accounts(id) ON DELETE CASCADE,
	messages   INTEGER NOT NULL DEFAULT 0,
	bytes      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO account_totals (account_id, messages, bytes)
	SELECT b.account_id, count(*), sum(m.size) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id GROUP BY b.account_id;
CREATE TRIGGER account_totals_insert AFTER INSERT ON messages BEGIN
	INSERT INTO account_totals (account_id, messages, bytes)
		SELECT account_id, 1, NEW.size FROM mailboxes WHERE id = NEW.mailbox_id
		ON CONFLICT (account_id) DO UPDATE SET messages = messages + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER account_totals_delete AFTER DELETE ON messages BEGIN
	UPDATE account_totals SET messages = messages - 1, bytes = bytes - OLD.size
		WHERE account_id = (SELECT account_id FROM mailboxes WHERE id = OLD.mailbox_id);
END;
CREATE TRIGGER account_totals_move AFTER UPDATE OF mailbox_id, size ON messages BEGIN
	UPDATE account_totals SET messages = messages - 1, bytes = bytes - OLD.size
		WHERE account_id = (SELECT account_id FROM mailboxes WHERE id = OLD.mailbox_id);
	INSERT INTO account_totals (account_id, messages, bytes)
		SELECT account_id, 1, NEW.size FROM mailboxes WHERE id = NEW.mailbox_id
		ON CONFLICT (account_id) DO UPDATE SET messages = messages + 1, bytes = bytes + excluded.bytes;
END;
CREATE TRIGGER account_totals_mailbox_move AFTER UPDATE OF account_id ON mailboxes BEGIN
	UPDATE account_totals SET
		messages = messages - (SELECT count(*) FROM messages WHERE mailbox_id = NEW.id),
		bytes = bytes - (SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = NEW.id)
		WHERE account_id = OLD.account_id;
	INSERT INTO account_totals (account_id, messages, bytes)
		SELECT NEW.account_id, count(*), coalesce(sum(size), 0) FROM messages WHERE mailbox_id = NEW.id
		ON CONFLICT (account_id) DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes;
END;
`,
	// 12: holds the number an earlier build gave a covering summary
	// index (it cost a tenth of every insert): a store of that build is
	// at 12 already and loses the index in 13; on a store below 12 the
	// index does not exist and this does nothing.
	`DROP INDEX IF EXISTS messages_summary;`,
	// 13: the cached MIME structures in a table of their own: a message's
	// row stays small, so loading a mailbox's summaries (every SELECT
	// after a restart) walks fewer pages (a cold SELECT of 100,000
	// messages 102-126 ms, 136-140 ms with the structures in the rows).
	`
DROP INDEX IF EXISTS messages_summary;
CREATE TABLE message_structures (
	id        INTEGER PRIMARY KEY, -- the message's id
	structure BLOB NOT NULL
);
INSERT INTO message_structures (id, structure) SELECT id, structure FROM messages;
ALTER TABLE messages DROP COLUMN structure;
CREATE TRIGGER message_structures_delete AFTER DELETE ON messages BEGIN
	DELETE FROM message_structures WHERE id = OLD.id;
END;
`,
	// 14: bodies written by a batch share one pack file, a blob of its
	// own: a body here is its stretch of the pack, not a file of its own
	// (one file per batch costs a fraction of one per message to create
	// and sync). The row goes when the body's queued unlink is done; the
	// pack is queued for unlinking with its last row.
	`
CREATE TABLE packed_bodies (
	id     INTEGER PRIMARY KEY, -- the body's blob id (its message's id)
	pack   INTEGER NOT NULL,    -- the blob id of the pack file
	offset INTEGER NOT NULL,
	size   INTEGER NOT NULL
);
CREATE INDEX packed_bodies_pack ON packed_bodies (pack);
CREATE TRIGGER packed_bodies_last AFTER DELETE ON packed_bodies
WHEN NOT EXISTS (SELECT 1 FROM packed_bodies WHERE pack = OLD.pack) BEGIN
	INSERT OR IGNORE INTO unlink_queue (blob_id) VALUES (OLD.pack);
END;
`,
}

// checkVersion checks that a store opened beside its owner has the schema
// this binary knows.
func checkVersion(ctx context.Context, db *sql.DB) error {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version != len(migrations) {
		return fmt.Errorf("schema version %d, this mailcapture knows %d: run the same version as serve", version, len(migrations))
	}
	return nil
}

// migrate brings the schema to the newest version, one transaction per
// migration.
func migrate(ctx context.Context, db *sql.DB) error {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this mailcapture knows (%d): refusing to run an older binary on a newer store", version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v+1)); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", v+1, err)
		}
	}
	return nil
}
