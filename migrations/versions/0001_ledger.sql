-- The credit ledger. Invariants (asserted by tests/invariants.py after every test):
--   I1 a bucket's remaining = sum(ledger_entries.amount) of its entries, 0 <= remaining <= granted; for the
--      live plan bucket (wallet.plan_bucket_id) the remaining is wallet.plan_remaining: the debit's hot
--      row is the wallet alone, so the bucket row is only written when the bucket opens and closes
--   I2 wallet.topup_remaining = sum(remaining) of its pack buckets; plan_remaining = 0 with no live bucket
--   I3 wallet.held = -sum(amount) of its reservation entries (bucket_id IS NULL) = sum(cost) of open holds
--   I4 a plan bucket that is not live has remaining 0 (closed by an explicit expire entry)
-- Every write to an organization's rows happens under its wallet row lock, so the functions below
-- serialise per organization and never overdraw.

CREATE TABLE wallets (
    org_id                text PRIMARY KEY CHECK (org_id <> ''),
    plan                  text NOT NULL,
    tiers                 text[] NOT NULL,
    max_holds             integer NOT NULL CHECK (max_holds > 0),
    daily_grant           bigint NOT NULL DEFAULT 0 CHECK (daily_grant >= 0),
    period_start          timestamptz NOT NULL,
    period_end            timestamptz,
    allocation            bigint NOT NULL DEFAULT 0 CHECK (allocation >= 0),
    consumed              bigint NOT NULL DEFAULT 0 CHECK (consumed >= 0),
    plan_remaining        bigint NOT NULL DEFAULT 0 CHECK (plan_remaining >= 0),
    plan_expires_at       timestamptz,
    plan_bucket_id        bigint,        -- the live plan bucket: the debit's fast path draws it directly
    topup_remaining       bigint NOT NULL DEFAULT 0 CHECK (topup_remaining >= 0),
    held                  bigint NOT NULL DEFAULT 0 CHECK (held >= 0),
    open_holds            integer NOT NULL DEFAULT 0 CHECK (open_holds >= 0),
    low_balance_threshold bigint CHECK (low_balance_threshold >= 0),
    low_balance_armed     boolean NOT NULL DEFAULT true,
    has_user_limits       boolean NOT NULL DEFAULT false,
    has_guards            boolean NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL
);

CREATE TABLE buckets (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL REFERENCES wallets (org_id),
    grant_key   text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('plan', 'pack')),
    granted     bigint NOT NULL CHECK (granted > 0),
    remaining   bigint NOT NULL CHECK (remaining >= 0 AND remaining <= granted),
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL,
    UNIQUE (org_id, grant_key),
    CHECK ((kind = 'plan') = (expires_at IS NOT NULL))
);
-- Packs are drawn oldest first. Not partial on remaining, so draws are HOT updates (no new index entry).
CREATE INDEX buckets_packs ON buckets (org_id, id) WHERE kind = 'pack';

CREATE TABLE ledger_entries (
    id          bigserial,
    org_id      text NOT NULL,
    bucket_id   bigint,  -- no FK: its check would share-lock the bucket row the debit just updated
    kind        text NOT NULL CHECK (kind IN ('grant', 'debit', 'expire', 'adjust', 'hold', 'release')),
    amount      bigint NOT NULL,
    ref         text NOT NULL,
    created_at  timestamptz NOT NULL,
    CHECK ((bucket_id IS NULL) = (kind IN ('hold', 'release'))),
    -- One btree serves uniqueness and an organization's entries in order; BRIN narrows time ranges.
    PRIMARY KEY (org_id, id)
);
CREATE INDEX ledger_entries_time ON ledger_entries USING brin (created_at);

CREATE TABLE usage_events (
    org_id        text NOT NULL,
    idem_key      text NOT NULL,
    source        text NOT NULL CHECK (source IN ('debit', 'hold')),
    action        text NOT NULL,
    tier          text,
    quantity      numeric NOT NULL CHECK (quantity > 0),
    country       text,
    user_id       text,
    cost          bigint NOT NULL CHECK (cost >= 0),
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (org_id, idem_key)
);
-- BRIN, not btree: usage is appended in time order, and a range query ANDs it with the primary key's
-- org_id prefix. Nearly free to maintain on the debit path.
CREATE INDEX usage_events_time ON usage_events USING brin (created_at);

CREATE TABLE holds (
    org_id      text NOT NULL REFERENCES wallets (org_id),
    idem_key    text NOT NULL,
    action      text NOT NULL,
    tier        text,
    quantity    numeric NOT NULL CHECK (quantity > 0),
    country     text,
    user_id     text,
    cost        bigint NOT NULL CHECK (cost >= 0),
    status      text NOT NULL CHECK (status IN ('open', 'committed', 'released', 'expired')),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL,
    settled_at  timestamptz,
    PRIMARY KEY (org_id, idem_key)
);
CREATE INDEX holds_open ON holds (org_id, expires_at) WHERE status = 'open';

CREATE TABLE user_limits (
    org_id      text NOT NULL REFERENCES wallets (org_id),
    user_id     text NOT NULL,            -- '*' is the default for every user of the organization
    limit_milli bigint NOT NULL CHECK (limit_milli >= 0),
    PRIMARY KEY (org_id, user_id)
);

CREATE TABLE user_usage (
    org_id       text NOT NULL,
    user_id      text NOT NULL,
    period_start timestamptz NOT NULL,
    consumed     bigint NOT NULL CHECK (consumed >= 0),
    PRIMARY KEY (org_id, user_id, period_start)
);

CREATE TABLE usage_guards (
    org_id          text NOT NULL REFERENCES wallets (org_id),
    action          text NOT NULL,
    max_uses        integer NOT NULL CHECK (max_uses > 0),
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    window_start    timestamptz,           -- fixed windows: uses counted since window_start
    uses            integer NOT NULL DEFAULT 0,
    paused_at       timestamptz,
    PRIMARY KEY (org_id, action)
);

-- Alerts are recorded once per (org, kind, period_key) by the debit transaction; the email work sends
-- them and stamps sent_at.
CREATE TABLE alerts (
    id          bigserial PRIMARY KEY,
    org_id      text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('plan_80', 'plan_100', 'low_balance', 'usage_guard_paused')),
    period_key  text NOT NULL,
    detail      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL,
    sent_at     timestamptz,
    UNIQUE (org_id, kind, period_key)
);
CREATE INDEX alerts_unsent ON alerts (id) WHERE sent_at IS NULL;

-- Idempotency of the cold-path operations (start_period, grants): business key -> request.
CREATE TABLE wallet_ops (
    org_id      text NOT NULL,
    op_key      text NOT NULL,
    request     text NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (org_id, op_key)
);

------------------------------------------------------------------------------------------------------
-- Internal helpers. Each takes the locked wallet row and returns it updated; the caller writes it back.
------------------------------------------------------------------------------------------------------

-- Close the live plan bucket: an explicit expire entry for what is left, and its final remaining (0).
CREATE FUNCTION ledger_close_plan(w wallets, p_ref text, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
BEGIN
    IF w.plan_bucket_id IS NOT NULL THEN
        IF w.plan_remaining > 0 THEN
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, w.plan_bucket_id, 'expire', -w.plan_remaining, p_ref, p_now);
        END IF;
        UPDATE buckets SET remaining = 0 WHERE id = w.plan_bucket_id;
    END IF;
    w.plan_remaining := 0;
    w.plan_bucket_id := NULL;
    w.plan_expires_at := NULL;
    RETURN w;
END $$;

-- Catch the wallet up with time: release holds past their TTL, expire a plan bucket past its end, and
-- grant the free plan's credits for the current UTC day (lazily: no timer per free organization).
CREATE FUNCTION ledger_refresh(w wallets, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v_day timestamptz;
    v_bucket bigint;
BEGIN
    IF w.open_holds > 0 THEN
        FOR r IN UPDATE holds SET status = 'expired', settled_at = p_now
                 WHERE org_id = w.org_id AND status = 'open' AND expires_at <= p_now
                 RETURNING idem_key, cost LOOP
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, NULL, 'release', r.cost, 'hold:' || r.idem_key, p_now);
            w.held := w.held - r.cost;
            w.open_holds := w.open_holds - 1;
        END LOOP;
    END IF;
    IF w.plan_expires_at <= p_now THEN
        w := ledger_close_plan(w, 'expiry', p_now);
    END IF;
    IF w.daily_grant > 0 AND w.plan_expires_at IS NULL THEN
        v_day := date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (w.org_id, 'daily:' || to_char(v_day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 'plan',
                    w.daily_grant, w.daily_grant, v_day + interval '1 day', p_now)
            ON CONFLICT (org_id, grant_key) DO NOTHING
            RETURNING id INTO v_bucket;
        IF v_bucket IS NOT NULL THEN
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, v_bucket, 'grant', w.daily_grant,
                        'daily:' || to_char(v_day AT TIME ZONE 'UTC', 'YYYY-MM-DD'), p_now);
            w.plan_remaining := w.daily_grant;
            w.plan_bucket_id := v_bucket;
        END IF;
        w.plan_expires_at := v_day + interval '1 day';
        w.period_start := v_day;
        w.period_end := v_day + interval '1 day';
        w.allocation := w.daily_grant;
        -- Today's bucket existed already (closed by a plan change today): today's credits were given.
        w.consumed := CASE WHEN v_bucket IS NULL THEN w.daily_grant ELSE 0 END;
    END IF;
    RETURN w;
END $$;

-- Draw p_amount from the live buckets, soonest expiry first, then packs oldest first. The caller has
-- checked that the live balance covers it. Returns the wallet with its class balances reduced and the
-- plan credits consumed counted.
CREATE FUNCTION ledger_draw(w wallets, p_amount bigint, p_ref text, p_now timestamptz) RETURNS wallets
LANGUAGE plpgsql AS $$
DECLARE
    b record;
    v_left bigint := p_amount;
    v_take bigint;
BEGIN
    -- The live plan bucket expires soonest (packs never do): it goes first.
    IF w.plan_remaining > 0 THEN
        v_take := least(w.plan_remaining, v_left);
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (w.org_id, w.plan_bucket_id, 'debit', -v_take, p_ref, p_now);
        w.plan_remaining := w.plan_remaining - v_take;
        w.consumed := w.consumed + v_take;
        v_left := v_left - v_take;
    END IF;
    IF v_left > 0 THEN
        FOR b IN SELECT id, remaining FROM buckets
                 WHERE org_id = w.org_id AND kind = 'pack' AND remaining > 0 ORDER BY id LOOP
            v_take := least(b.remaining, v_left);
            UPDATE buckets SET remaining = remaining - v_take WHERE id = b.id;
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (w.org_id, b.id, 'debit', -v_take, p_ref, p_now);
            w.topup_remaining := w.topup_remaining - v_take;
            v_left := v_left - v_take;
            EXIT WHEN v_left = 0;
        END LOOP;
    END IF;
    IF v_left <> 0 THEN
        RAISE EXCEPTION 'ledger_draw: % short by % for %', w.org_id, v_left, p_ref;
    END IF;
    RETURN w;
END $$;

-- Record the 80% / 100% plan-consumption crossings (once per period) and the low-balance crossing
-- (once until the balance rises above the threshold again).
CREATE FUNCTION ledger_alerts(w wallets, p_consumed_before bigint, p_ref text, p_now timestamptz)
RETURNS wallets LANGUAGE plpgsql AS $$
DECLARE
    v_period text := extract(epoch FROM w.period_start)::bigint::text;
BEGIN
    IF w.allocation > 0 THEN
        IF p_consumed_before * 5 < w.allocation * 4 AND w.consumed * 5 >= w.allocation * 4 THEN
            INSERT INTO alerts (org_id, kind, period_key, created_at) VALUES (w.org_id, 'plan_80', v_period, p_now)
                ON CONFLICT DO NOTHING;
        END IF;
        IF p_consumed_before < w.allocation AND w.consumed >= w.allocation THEN
            INSERT INTO alerts (org_id, kind, period_key, created_at) VALUES (w.org_id, 'plan_100', v_period, p_now)
                ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    IF w.low_balance_armed AND w.low_balance_threshold IS NOT NULL
       AND w.plan_remaining + w.topup_remaining - w.held < w.low_balance_threshold THEN
        INSERT INTO alerts (org_id, kind, period_key, detail, created_at)
            VALUES (w.org_id, 'low_balance', p_ref, (w.plan_remaining + w.topup_remaining - w.held)::text, p_now)
            ON CONFLICT DO NOTHING;
        w.low_balance_armed := false;
    END IF;
    RETURN w;
END $$;

-- plpgsql (not sql) so the UPDATE's plan is cached per session instead of planned on every call.
CREATE FUNCTION ledger_save(w wallets, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE wallets SET plan = w.plan, tiers = w.tiers, max_holds = w.max_holds, daily_grant = w.daily_grant,
        period_start = w.period_start, period_end = w.period_end, allocation = w.allocation,
        consumed = w.consumed, plan_remaining = w.plan_remaining, plan_expires_at = w.plan_expires_at,
        plan_bucket_id = w.plan_bucket_id,
        topup_remaining = w.topup_remaining, held = w.held, open_holds = w.open_holds,
        low_balance_threshold = w.low_balance_threshold, low_balance_armed = w.low_balance_armed,
        updated_at = p_now
    WHERE org_id = w.org_id;
END $$;

-- The rules a debit or a hold must pass under the wallet lock, in order: the plan's model tiers, (for a
-- hold) the plan's concurrency, the usage guard, the per-user limit, the available balance. Returns
-- NULL when allowed, else (status, detail_a, detail_b).
CREATE FUNCTION ledger_check(w wallets, p_action text, p_tier text, p_user text, p_cost bigint,
                             p_is_hold boolean, p_ref text, p_now timestamptz,
                             OUT status text, OUT detail_a bigint, OUT detail_b bigint)
LANGUAGE plpgsql AS $$
DECLARE
    g usage_guards%ROWTYPE;
    v_uses integer;
    v_limit bigint;
    v_used bigint;
BEGIN
    IF p_tier IS NOT NULL AND NOT (p_tier = ANY (w.tiers)) THEN
        status := 'tier'; RETURN;
    END IF;
    IF p_is_hold AND w.open_holds >= w.max_holds THEN
        status := 'concurrency'; detail_a := w.max_holds; RETURN;
    END IF;
    IF w.has_guards THEN
        SELECT * INTO g FROM usage_guards WHERE org_id = w.org_id AND action = p_action;
        IF FOUND THEN
            IF g.paused_at IS NOT NULL THEN
                status := 'guard_paused'; RETURN;
            END IF;
            v_uses := CASE WHEN g.window_start + make_interval(secs => g.window_seconds) > p_now
                           THEN g.uses ELSE 0 END;
            IF v_uses >= g.max_uses THEN
                -- This use would be one too many: pause the action (kept: the refusal is the point).
                UPDATE usage_guards SET paused_at = p_now WHERE org_id = w.org_id AND action = p_action;
                INSERT INTO alerts (org_id, kind, period_key, detail, created_at)
                    VALUES (w.org_id, 'usage_guard_paused', p_action || ':' || p_ref, p_action, p_now)
                    ON CONFLICT DO NOTHING;
                status := 'guard_paused'; detail_a := g.max_uses; RETURN;
            END IF;
        END IF;
    END IF;
    IF w.has_user_limits AND p_user IS NOT NULL THEN
        SELECT limit_milli INTO v_limit FROM user_limits
            WHERE org_id = w.org_id AND user_id IN (p_user, '*') ORDER BY user_id = '*' LIMIT 1;
        IF FOUND THEN
            SELECT coalesce(max(consumed), 0) INTO v_used FROM user_usage
                WHERE org_id = w.org_id AND user_id = p_user AND period_start = w.period_start;
            IF v_used + p_cost > v_limit THEN
                status := 'user_limit'; detail_a := v_limit; detail_b := v_used; RETURN;
            END IF;
        END IF;
    END IF;
    IF p_cost > w.plan_remaining + w.topup_remaining - w.held THEN
        status := 'insufficient';
    END IF;
END $$;

-- Count a successful use against the usage guard's window and the user's period limit.
CREATE FUNCTION ledger_count_use(w wallets, p_action text, p_user text, p_cost bigint, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF w.has_guards THEN
        UPDATE usage_guards SET
            uses = CASE WHEN window_start + make_interval(secs => window_seconds) > p_now THEN uses + 1 ELSE 1 END,
            window_start = CASE WHEN window_start + make_interval(secs => window_seconds) > p_now
                                THEN window_start ELSE p_now END
        WHERE org_id = w.org_id AND action = p_action;
    END IF;
    IF w.has_user_limits AND p_user IS NOT NULL THEN
        INSERT INTO user_usage (org_id, user_id, period_start, consumed)
            VALUES (w.org_id, p_user, w.period_start, p_cost)
            ON CONFLICT (org_id, user_id, period_start)
            DO UPDATE SET consumed = user_usage.consumed + EXCLUDED.consumed;
    END IF;
END $$;

------------------------------------------------------------------------------------------------------
-- Entry points. Each is one statement from the client: one round trip.
-- status: ok | unknown_org | conflict | tier | guard_paused | user_limit | insufficient | concurrency
--         | hold_unknown | hold_committed | hold_released | hold_expired
------------------------------------------------------------------------------------------------------

-- One debit decided under the wallet lock the caller holds: catch up with time, check every rule,
-- claim the idempotency key, draw, record alerts. Returns the wallet as changed (the caller saves it
-- when dirty) and the debit's result.
CREATE TYPE ledger_step AS (w wallets, status text, cost bigint, available bigint, replayed boolean,
                            detail_a bigint, detail_b bigint, dirty boolean);

CREATE FUNCTION ledger_debit_locked(w wallets, p_key text, p_action text, p_tier text, p_qty numeric,
                                    p_country text, p_user text, p_cost bigint, p_now timestamptz)
RETURNS ledger_step LANGUAGE plpgsql AS $$
DECLARE
    r ledger_step;
    u usage_events%ROWTYPE;
    v_before bigint;
BEGIN
    r.replayed := false; r.cost := p_cost; r.dirty := false;
    IF w.open_holds > 0 OR w.plan_expires_at <= p_now OR (w.plan_expires_at IS NULL AND w.daily_grant > 0) THEN
        w := ledger_refresh(w, p_now);
        r.dirty := true;  -- keep what ledger_refresh caught up with, whatever this debit's fate
    END IF;
    SELECT c.status, c.detail_a, c.detail_b INTO r.status, r.detail_a, r.detail_b
        FROM ledger_check(w, p_action, p_tier, p_user, p_cost, false, p_key, p_now) c;
    r.available := w.plan_remaining + w.topup_remaining - w.held;
    IF r.status IS NULL THEN
        -- Claim the idempotency key; the primary key arbitrates, so a repeat is found without a lookup.
        INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, cost,
                                  created_at)
            VALUES (w.org_id, p_key, 'debit', p_action, p_tier, p_qty, p_country, p_user, p_cost, p_now)
            ON CONFLICT (org_id, idem_key) DO NOTHING;
        IF NOT FOUND THEN
            r.status := 'repeat';
        END IF;
    END IF;
    IF r.status IS NOT NULL THEN
        -- Nothing of this debit is written. A repeat of a key that already succeeded returns the first
        -- result's charge; different content under the same key is a conflict.
        SELECT * INTO u FROM usage_events WHERE org_id = w.org_id AND idem_key = p_key;
        IF FOUND THEN
            r.replayed := true; r.cost := u.cost; r.detail_a := NULL; r.detail_b := NULL;
            IF u.source <> 'debit' OR u.action <> p_action OR u.tier IS DISTINCT FROM p_tier
               OR u.quantity <> p_qty OR u.country IS DISTINCT FROM p_country
               OR u.user_id IS DISTINCT FROM p_user THEN
                r.status := 'conflict';
            ELSE
                r.status := 'ok';
            END IF;
        END IF;
        r.w := w;
        RETURN r;
    END IF;
    v_before := w.consumed;
    w := ledger_draw(w, p_cost, p_key, p_now);
    r.available := r.available - p_cost;
    IF w.low_balance_armed AND r.available < w.low_balance_threshold
       OR (w.allocation > 0 AND w.consumed * 5 >= w.allocation * 4 AND v_before < w.allocation) THEN
        w := ledger_alerts(w, v_before, p_key, p_now);
    END IF;
    IF w.has_guards OR w.has_user_limits THEN
        PERFORM ledger_count_use(w, p_action, p_user, p_cost, p_now);
    END IF;
    r.status := 'ok'; r.dirty := true; r.w := w;
    RETURN r;
END $$;

CREATE FUNCTION ledger_debit(p_org text, p_key text, p_action text, p_tier text, p_qty numeric,
                             p_country text, p_user text, p_cost bigint, p_now timestamptz,
                             OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                             OUT detail_a bigint, OUT detail_b bigint)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_entry bigint;
    r ledger_step;
BEGIN
    replayed := false; cost := p_cost;

    -- Fast path, the common case: the live plan bucket covers the cost and no rule needs the lock
    -- held while it looks. Everything is written before the wallet row is locked; the lock is taken
    -- last, by one UPDATE whose conditions PostgreSQL re-checks on the latest row version, so it is
    -- held only for that UPDATE and the commit. If the wallet changed meanwhile, the two inserts are
    -- undone and the locked path below decides.
    SELECT * INTO w FROM wallets WHERE org_id = p_org;
    IF FOUND AND w.plan_expires_at > p_now AND w.plan_remaining >= p_cost AND w.open_holds = 0
       AND NOT w.has_guards AND NOT w.has_user_limits AND (p_tier IS NULL OR p_tier = ANY (w.tiers)) THEN
        INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, cost,
                                  created_at)
            VALUES (p_org, p_key, 'debit', p_action, p_tier, p_qty, p_country, p_user, p_cost, p_now)
            ON CONFLICT (org_id, idem_key) DO NOTHING;
        IF FOUND THEN
            INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
                VALUES (p_org, w.plan_bucket_id, 'debit', -p_cost, p_key, p_now)
                RETURNING id INTO v_entry;
            UPDATE wallets SET plan_remaining = plan_remaining - p_cost, consumed = consumed + p_cost,
                               updated_at = p_now
            WHERE org_id = p_org AND plan_bucket_id = w.plan_bucket_id AND plan_expires_at > p_now
              AND plan_remaining >= p_cost AND open_holds = 0 AND NOT has_guards AND NOT has_user_limits
              AND (p_tier IS NULL OR p_tier = ANY (tiers))
              -- no alert to record: neither the 80% nor the 100% mark is crossed, no low-balance crossing
              AND NOT (allocation > 0 AND (consumed + p_cost) * 5 >= allocation * 4 AND consumed < allocation)
              AND (NOT low_balance_armed OR low_balance_threshold IS NULL
                   OR plan_remaining + topup_remaining - p_cost >= low_balance_threshold)
            RETURNING plan_remaining + topup_remaining - held INTO available;
            IF FOUND THEN
                status := 'ok';
                RETURN;
            END IF;
            DELETE FROM ledger_entries WHERE org_id = p_org AND id = v_entry;
            DELETE FROM usage_events WHERE org_id = p_org AND idem_key = p_key;
        END IF;
    END IF;

    -- Locked path: every rule, under the wallet lock.
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    r := ledger_debit_locked(w, p_key, p_action, p_tier, p_qty, p_country, p_user, p_cost, p_now);
    IF r.dirty THEN
        PERFORM ledger_save(r.w, p_now);
    END IF;
    status := r.status; cost := r.cost; available := r.available; replayed := r.replayed;
    detail_a := r.detail_a; detail_b := r.detail_b;
END $$;

-- Several debits of one wallet in one transaction: one lock, one save, one commit for all of them.
-- The client batches concurrent debits of the same organization (activities/ledger.py); each item is
-- decided by exactly the rules of a single debit, in order, and gets its own result row.
CREATE FUNCTION ledger_debit_batch(p_org text, p_keys text[], p_actions text[], p_tiers text[],
                                   p_qtys numeric[], p_countries text[], p_users text[], p_costs bigint[],
                                   p_nows timestamptz[])
RETURNS TABLE (status text, cost bigint, available bigint, replayed boolean, detail_a bigint, detail_b bigint)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    r ledger_step;
    v_dirty boolean := false;
BEGIN
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    FOR i IN 1 .. cardinality(p_keys) LOOP
        IF w.org_id IS NULL THEN
            status := 'unknown_org'; cost := p_costs[i]; available := NULL; replayed := false;
        ELSE
            r := ledger_debit_locked(w, p_keys[i], p_actions[i], p_tiers[i], p_qtys[i], p_countries[i],
                                     p_users[i], p_costs[i], p_nows[i]);
            w := r.w;
            v_dirty := v_dirty OR r.dirty;
            status := r.status; cost := r.cost; available := r.available; replayed := r.replayed;
            detail_a := r.detail_a; detail_b := r.detail_b;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_dirty THEN
        PERFORM ledger_save(w, p_nows[cardinality(p_nows)]);
    END IF;
END $$;

CREATE FUNCTION ledger_hold(p_org text, p_key text, p_action text, p_tier text, p_qty numeric,
                            p_country text, p_user text, p_cost bigint, p_expires_at timestamptz,
                            p_now timestamptz,
                            OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                            OUT detail_a bigint, OUT detail_b bigint)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    h holds%ROWTYPE;
BEGIN
    replayed := false; cost := p_cost;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);
    available := w.plan_remaining + w.topup_remaining - w.held;
    SELECT * INTO h FROM holds WHERE org_id = p_org AND idem_key = p_key;
    IF FOUND THEN
        replayed := true; cost := h.cost;
        IF h.action <> p_action OR h.tier IS DISTINCT FROM p_tier OR h.quantity <> p_qty
           OR h.country IS DISTINCT FROM p_country OR h.user_id IS DISTINCT FROM p_user THEN
            status := 'conflict';
        ELSIF h.status = 'open' THEN
            status := 'ok';
        ELSE
            status := 'hold_' || h.status;
        END IF;
        PERFORM ledger_save(w, p_now);
        RETURN;
    END IF;
    SELECT * INTO status, detail_a, detail_b
        FROM ledger_check(w, p_action, p_tier, p_user, p_cost, true, p_key, p_now);
    IF status IS NULL THEN
        INSERT INTO holds (org_id, idem_key, action, tier, quantity, country, user_id, cost, status,
                           expires_at, created_at)
            VALUES (p_org, p_key, p_action, p_tier, p_qty, p_country, p_user, p_cost, 'open', p_expires_at, p_now);
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, NULL, 'hold', -p_cost, 'hold:' || p_key, p_now);
        w.held := w.held + p_cost;
        w.open_holds := w.open_holds + 1;
        available := available - p_cost;
        status := 'ok';
    END IF;
    PERFORM ledger_save(w, p_now);
END $$;

-- Settle an open hold: commit charges its cost from the buckets, release charges nothing.
CREATE FUNCTION ledger_settle(p_org text, p_key text, p_commit boolean, p_now timestamptz,
                              OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    h holds%ROWTYPE;
    v_before bigint;
    v_live bigint;
    v_charge bigint;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);  -- a hold past its TTL is released here, before we look at it
    SELECT * INTO h FROM holds WHERE org_id = p_org AND idem_key = p_key;
    IF NOT FOUND THEN
        status := 'hold_unknown';
    ELSIF h.status = 'open' THEN
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, NULL, 'release', h.cost, 'hold:' || p_key, p_now);
        w.held := w.held - h.cost;
        w.open_holds := w.open_holds - 1;
        IF p_commit THEN
            -- Buckets can expire while a hold is open; never draw more than is left.
            v_live := w.plan_remaining + w.topup_remaining - w.held;
            v_charge := least(h.cost, greatest(v_live, 0));
            v_before := w.consumed;
            IF v_charge > 0 THEN
                w := ledger_draw(w, v_charge, 'hold:' || p_key, p_now);
            END IF;
            w := ledger_alerts(w, v_before, 'hold:' || p_key, p_now);
            IF w.has_guards OR w.has_user_limits THEN
                PERFORM ledger_count_use(w, h.action, h.user_id, v_charge, p_now);
            END IF;
            INSERT INTO usage_events (org_id, idem_key, source, action, tier, quantity, country, user_id, cost,
                                      created_at)
                VALUES (p_org, 'hold:' || p_key, 'hold', h.action, h.tier, h.quantity, h.country, h.user_id,
                        v_charge, p_now);
            UPDATE holds SET status = 'committed', settled_at = p_now, cost = v_charge
                WHERE org_id = p_org AND idem_key = p_key;
            h.cost := v_charge;
        ELSE
            UPDATE holds SET status = 'released', settled_at = p_now WHERE org_id = p_org AND idem_key = p_key;
        END IF;
        status := 'ok';
    ELSIF (h.status = 'committed' AND p_commit) OR (h.status = 'released' AND NOT p_commit) THEN
        status := 'ok'; replayed := true;
    ELSE
        status := 'hold_' || h.status;
    END IF;
    cost := CASE WHEN p_commit THEN h.cost ELSE 0 END;
    available := w.plan_remaining + w.topup_remaining - w.held;
    PERFORM ledger_save(w, p_now);
END $$;

-- Open the wallet if needed and start an allocation period: expire what is left of the plan bucket
-- and grant the new allocation (or, on a daily plan, arm the lazy daily grant). Idempotent by p_key.
CREATE FUNCTION ledger_start_period(p_org text, p_key text, p_plan text, p_tiers text[], p_max_holds integer,
                                    p_daily_grant bigint, p_allocation bigint, p_period_start timestamptz,
                                    p_period_end timestamptz, p_now timestamptz,
                                    OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_request text := concat_ws('|', p_plan, array_to_string(p_tiers, ','), p_max_holds, p_daily_grant,
                                p_allocation, p_period_start, p_period_end);
    v_prev text;
    v_bucket bigint;
BEGIN
    replayed := false;
    -- A new wallet starts empty (daily_grant 0); the plan's terms are applied below, once.
    INSERT INTO wallets (org_id, plan, tiers, max_holds, period_start, created_at, updated_at)
        VALUES (p_org, p_plan, p_tiers, p_max_holds, p_period_start, p_now, p_now)
        ON CONFLICT (org_id) DO NOTHING;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    SELECT request INTO v_prev FROM wallet_ops WHERE org_id = p_org AND op_key = p_key;
    IF FOUND THEN
        replayed := true;
        status := CASE WHEN v_prev = v_request THEN 'ok' ELSE 'conflict' END;
        available := w.plan_remaining + w.topup_remaining - w.held;
        RETURN;
    END IF;
    INSERT INTO wallet_ops (org_id, op_key, request, created_at) VALUES (p_org, p_key, v_request, p_now);
    w := ledger_refresh(w, p_now);
    w := ledger_close_plan(w, p_key, p_now);
    w.plan := p_plan; w.tiers := p_tiers; w.max_holds := p_max_holds; w.daily_grant := p_daily_grant;
    w.period_start := p_period_start; w.period_end := p_period_end;
    w.allocation := p_allocation; w.consumed := 0;
    IF p_daily_grant = 0 AND p_allocation > 0 THEN
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'plan', p_allocation, p_allocation, p_period_end, p_now)
            RETURNING id INTO v_bucket;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, v_bucket, 'grant', p_allocation, p_key, p_now);
        w.plan_remaining := p_allocation;
        w.plan_expires_at := p_period_end;
        w.plan_bucket_id := v_bucket;
    END IF;
    w := ledger_refresh(w, p_now);  -- a daily plan gets today's credits now
    IF w.low_balance_threshold IS NOT NULL
       AND w.plan_remaining + w.topup_remaining - w.held >= w.low_balance_threshold THEN
        w.low_balance_armed := true;
    END IF;
    PERFORM ledger_save(w, p_now);
    status := 'ok';
    available := w.plan_remaining + w.topup_remaining - w.held;
END $$;

-- Grant a never-expiring pack bucket. Idempotent by p_key (the bucket's grant_key).
CREATE FUNCTION ledger_grant_pack(p_org text, p_key text, p_amount bigint, p_now timestamptz,
                                  OUT status text, OUT available bigint, OUT replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    b buckets%ROWTYPE;
BEGIN
    replayed := false;
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND THEN status := 'unknown_org'; RETURN; END IF;
    w := ledger_refresh(w, p_now);
    SELECT * INTO b FROM buckets WHERE org_id = p_org AND grant_key = p_key;
    IF FOUND THEN
        replayed := true;
        status := CASE WHEN b.kind = 'pack' AND b.granted = p_amount THEN 'ok' ELSE 'conflict' END;
    ELSE
        INSERT INTO buckets (org_id, grant_key, kind, granted, remaining, expires_at, created_at)
            VALUES (p_org, p_key, 'pack', p_amount, p_amount, NULL, p_now) RETURNING * INTO b;
        INSERT INTO ledger_entries (org_id, bucket_id, kind, amount, ref, created_at)
            VALUES (p_org, b.id, 'grant', p_amount, p_key, p_now);
        w.topup_remaining := w.topup_remaining + p_amount;
        IF w.low_balance_threshold IS NOT NULL
           AND w.plan_remaining + w.topup_remaining - w.held >= w.low_balance_threshold THEN
            w.low_balance_armed := true;
        END IF;
        status := 'ok';
    END IF;
    available := w.plan_remaining + w.topup_remaining - w.held;
    PERFORM ledger_save(w, p_now);
END $$;

-- O(1) balance read: stored class balances; expiry and today's free grant are computed, not written.
-- Open holds are at most the plan's concurrency limit, so summing the live ones stays bounded.
CREATE FUNCTION ledger_balance(p_org text, p_now timestamptz,
                               OUT plan text, OUT plan_credits bigint, OUT topup bigint, OUT held bigint,
                               OUT allocation bigint, OUT consumed bigint, OUT period_start timestamptz,
                               OUT period_end timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT w.plan,
           CASE WHEN w.plan_expires_at > p_now THEN w.plan_remaining
                WHEN w.daily_grant > 0 THEN w.daily_grant ELSE 0 END,
           w.topup_remaining,
           CASE WHEN w.open_holds = 0 THEN 0 ELSE
               (SELECT coalesce(sum(h.cost), 0)::bigint FROM holds h
                WHERE h.org_id = w.org_id AND h.status = 'open' AND h.expires_at > p_now) END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now) THEN w.daily_grant ELSE w.allocation END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now) THEN 0 ELSE w.consumed END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' ELSE w.period_start END,
           CASE WHEN w.daily_grant > 0 AND (w.plan_expires_at IS NULL OR w.plan_expires_at <= p_now)
                THEN (date_trunc('day', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + interval '1 day'
                ELSE w.period_end END
    FROM wallets w WHERE w.org_id = p_org
$$;
