"""The SQLite store's tables and indexes, and the columns `init` adds to a file an older release made."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username TEXT PRIMARY KEY,
    display_name TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    is_admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    last_login REAL,
    agreement_version TEXT,
    limits TEXT NOT NULL DEFAULT '{}',
    admin_granted INTEGER NOT NULL DEFAULT 0,
    disabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(username),
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL,
    expires REAL,
    last_used REAL,
    models TEXT NOT NULL DEFAULT '[]',
    limits TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS api_keys_owner ON api_keys(owner);
-- The admin's key list pages newest first. The index carries every column its filters read but
-- the owner (which has its own index), so a filter, a count or a deep page never reads the table.
CREATE INDEX IF NOT EXISTS api_keys_newest ON api_keys(created DESC, id, active, expires, name, prefix, models);
CREATE TABLE IF NOT EXISTS usage_events (
    request_id TEXT PRIMARY KEY,
    ts REAL NOT NULL,
    key_id TEXT NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL DEFAULT '',
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    streamed INTEGER NOT NULL,
    estimated INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_events_ts ON usage_events(ts);
CREATE INDEX IF NOT EXISTS usage_events_user_ts ON usage_events(user, ts);
CREATE INDEX IF NOT EXISTS usage_events_key_ts ON usage_events(key_id, ts);
CREATE INDEX IF NOT EXISTS usage_events_model_ts ON usage_events(model, ts);
CREATE TABLE IF NOT EXISTS usage_rollups (
    bucket TEXT NOT NULL,
    start REAL NOT NULL,
    user TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (bucket, start, user, key_id, model)
);
-- Usage reports with a key read the daily rows through covering indexes (`bucket` is among the
-- columns, or SQLite would read the table to check it): by range of days, and by key.
CREATE INDEX IF NOT EXISTS usage_rollups_day ON usage_rollups(
    bucket, start, key_id, user, model, requests, prompt_tokens, completion_tokens, cost, estimated
) WHERE bucket = 'day';
CREATE INDEX IF NOT EXISTS usage_rollups_day_key ON usage_rollups(
    bucket, key_id, start, user, model, requests, prompt_tokens, completion_tokens, cost, estimated
) WHERE bucket = 'day';
-- Daily sums per person and model (no key), rebuilt with the "day" rollups: the rows usage reports
-- without a key read. Clustered on the primary key (WITHOUT ROWID), so a range of days is one
-- covering range scan.
CREATE TABLE IF NOT EXISTS usage_daily_users (
    start REAL NOT NULL,
    user TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (start, user, model)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_daily_users_user ON usage_daily_users(
    user, start, requests, prompt_tokens, completion_tokens, cost, estimated
);
CREATE INDEX IF NOT EXISTS usage_daily_users_model ON usage_daily_users(
    model, start, requests, prompt_tokens, completion_tokens, cost, estimated
);
-- Daily sums per model (no person, no key), rebuilt with the per-user daily rows: the few rows
-- usage reports by day or by model read when no person or key is asked for.
CREATE TABLE IF NOT EXISTS usage_daily_models (
    start REAL NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost REAL NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (start, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS claims (
    namespace TEXT NOT NULL,
    item_id TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (namespace, item_id)
);
CREATE INDEX IF NOT EXISTS claims_expires ON claims(expires);
CREATE TABLE IF NOT EXISTS budget_holds (
    request_id TEXT NOT NULL,
    counter TEXT NOT NULL,
    amount INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (request_id, counter)
);
CREATE INDEX IF NOT EXISTS budget_holds_counter ON budget_holds(counter, expires);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS admin_tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    active INTEGER NOT NULL DEFAULT 1,
    last_used REAL,
    owner TEXT NOT NULL DEFAULT '',
    parent TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    source TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_log_ts ON audit_log(ts);
CREATE INDEX IF NOT EXISTS audit_log_actor_ts ON audit_log(actor, ts);
CREATE INDEX IF NOT EXISTS audit_log_target_ts ON audit_log(target, ts);
CREATE INDEX IF NOT EXISTS audit_log_action_ts ON audit_log(action, ts);
"""

# Columns added after the first release: `init` adds them to a database created before them.
ADDED_COLUMNS = (
    ("users", "limits", "TEXT NOT NULL DEFAULT '{}'"),
    ("api_keys", "limits", "TEXT NOT NULL DEFAULT '{}'"),
    ("users", "admin_granted", "INTEGER NOT NULL DEFAULT 0"),
    ("users", "disabled", "INTEGER NOT NULL DEFAULT 0"),
    ("admin_tokens", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("admin_tokens", "parent", "TEXT NOT NULL DEFAULT ''"),
)
