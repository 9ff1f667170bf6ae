-- The HTTP service (docs/api.md): API keys and the replay record of POSTs under an Idempotency-Key.
-- Invariants (enforced by the checks below):
--   K1 a platform key reaches every organization and names none; an admin key names its organization; a member
--      key names its organization and its user
--   K2 a key is stored only as the SHA-256 of its secret (the secret is shown once, at creation)
--   K3 a revoked key stays revoked: revoked_at is set once (enforced by trigger)
CREATE TABLE api_keys (
    id          text PRIMARY KEY,                    -- key_<16 hex>: how the key is listed and revoked
    secret_sha  bytea NOT NULL UNIQUE CHECK (length(secret_sha) = 32),
    prefix      text NOT NULL,                       -- the secret's first characters, to recognise it in a list
    role        text NOT NULL CHECK (role IN ('platform', 'admin', 'member')),
    org_id      text,
    user_id     text,
    name        text NOT NULL DEFAULT '',
    created_by  text,                                -- the key that created it (NULL: the CLI or the main command)
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK ((role = 'platform') = (org_id IS NULL)),
    CHECK ((role = 'member') = (user_id IS NOT NULL))
);
CREATE INDEX api_keys_org ON api_keys (org_id, created_at);

CREATE FUNCTION api_keys_revoked_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'api key % was revoked at %: it stays revoked', OLD.id, OLD.revoked_at;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER api_keys_revoked_once BEFORE UPDATE ON api_keys FOR EACH ROW EXECUTE FUNCTION api_keys_revoked_once();

-- A POST whose operation the engine does not key itself (a subscription change, a key, an endpoint) is
-- answered once per (scope, Idempotency-Key): the first answer is stored and replayed; the same key with another
-- request is a conflict. scope is the organization the request acts on ('' for platform-level requests).
-- A row with status NULL is in flight: a concurrent duplicate is told so (409) instead of running twice.
CREATE TABLE http_idempotency (
    scope        text NOT NULL,
    key          text NOT NULL,
    fingerprint  text NOT NULL,                      -- SHA-256 of method, path and body
    status       integer,
    body         bytea,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
);
