-- Auto-recharge (DESIGN.md section 4). Invariants (asserted by tests/invariants.py after every test):
--   R1 wallets.recharge_threshold is auto_recharge.threshold while auto-recharge is enabled, else NULL
--   R2 an auto-recharge grant (bucket grant_key = its payment key) exists iff that payment succeeded,
--      for the credits the payment bought
-- The debit (and the hold) decides the threshold crossing in its own statement: wallets.recharge_threshold is the only
-- setting it reads, and wallets.recharge_resume_at is the lease that collapses concurrent triggers (a
-- recharge is under way, or the spending limit blocks it, until then).

ALTER TABLE wallets
    ADD COLUMN recharge_threshold bigint CHECK (recharge_threshold >= 0),
    ADD COLUMN recharge_resume_at timestamptz;

CREATE TABLE auto_recharge (
    org_id                text PRIMARY KEY REFERENCES wallets (org_id),
    enabled               boolean NOT NULL,
    threshold             bigint NOT NULL CHECK (threshold >= 0),
    pack                  text NOT NULL,
    spending_limit_cents  bigint NOT NULL CHECK (spending_limit_cents > 0),
    disabled_reason       text,           -- why the engine turned it off (payment_failed); NULL otherwise
    version               bigint NOT NULL DEFAULT 1,  -- +1 per change: a round decided on old settings yields
    updated_at            timestamptz NOT NULL
);
CREATE INDEX payments_auto_recharge ON payments (org_id, created_at) WHERE purpose = 'auto_recharge';

ALTER TYPE ledger_step ADD ATTRIBUTE recharge boolean;

-- The trigger rule, in one place: a debit or a hold that leaves `p_available` under the threshold while
-- no recharge is under way (no lease, or its lease ran out: a lost signal is asked again).
CREATE FUNCTION ledger_recharge_due(w wallets, p_available bigint, p_now timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT w.recharge_threshold IS NOT NULL AND p_available < w.recharge_threshold
           AND (w.recharge_resume_at IS NULL OR w.recharge_resume_at <= p_now)
$$;

-- How long a trigger holds off the next one (models/auto_recharge.py LEASE says the same).
CREATE FUNCTION ledger_recharge_lease() RETURNS interval LANGUAGE sql IMMUTABLE AS $$ SELECT interval '15 minutes' $$;

CREATE OR REPLACE FUNCTION ledger_save(w wallets, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE wallets SET plan = w.plan, tiers = w.tiers, max_holds = w.max_holds, daily_grant = w.daily_grant,
        period_start = w.period_start, period_end = w.period_end, allocation = w.allocation,
        consumed = w.consumed, plan_remaining = w.plan_remaining, plan_expires_at = w.plan_expires_at,
        plan_bucket_id = w.plan_bucket_id,
        topup_remaining = w.topup_remaining, held = w.held, open_holds = w.open_holds,
        low_balance_threshold = w.low_balance_threshold, low_balance_armed = w.low_balance_armed,
        recharge_threshold = w.recharge_threshold, recharge_resume_at = w.recharge_resume_at,
        updated_at = p_now
    WHERE org_id = w.org_id;
END $$;

CREATE OR REPLACE FUNCTION ledger_debit_locked(w wallets, p_key text, p_action text, p_tier text, p_qty numeric,
                                    p_country text, p_user text, p_cost bigint, p_now timestamptz)
RETURNS ledger_step LANGUAGE plpgsql AS $$
DECLARE
    r ledger_step;
    u usage_events%ROWTYPE;
    v_before bigint;
BEGIN
    r.replayed := false; r.cost := p_cost; r.dirty := false; r.recharge := false;
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
    IF ledger_recharge_due(w, r.available, p_now) THEN  -- take the lease; the caller signals
        w.recharge_resume_at := p_now + ledger_recharge_lease();
        r.recharge := true;
    END IF;
    r.status := 'ok'; r.dirty := true; r.w := w;
    RETURN r;
END $$;

-- The debit's result gains `recharge`: true when this debit took the recharge lease (signal the workflow).
DROP FUNCTION ledger_debit(text, text, text, text, numeric, text, text, bigint, timestamptz);
DROP FUNCTION ledger_debit_batch(text, text[], text[], text[], numeric[], text[], text[], bigint[], timestamptz[]);

CREATE FUNCTION ledger_debit(p_org text, p_key text, p_action text, p_tier text, p_qty numeric,
                             p_country text, p_user text, p_cost bigint, p_now timestamptz,
                             OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                             OUT detail_a bigint, OUT detail_b bigint, OUT recharge boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    v_entry bigint;
    r ledger_step;
BEGIN
    replayed := false; cost := p_cost; recharge := false;

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
              -- no auto-recharge to trigger: off, not crossed, or one already under way (leased)
              AND (recharge_threshold IS NULL OR recharge_resume_at > p_now
                   OR plan_remaining + topup_remaining - p_cost >= recharge_threshold)
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
    detail_a := r.detail_a; detail_b := r.detail_b; recharge := r.recharge;
END $$;

CREATE FUNCTION ledger_debit_batch(p_org text, p_keys text[], p_actions text[], p_tiers text[],
                                   p_qtys numeric[], p_countries text[], p_users text[], p_costs bigint[],
                                   p_nows timestamptz[])
RETURNS TABLE (status text, cost bigint, available bigint, replayed boolean, detail_a bigint, detail_b bigint,
               recharge boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    r ledger_step;
    v_dirty boolean := false;
BEGIN
    SELECT * INTO w FROM wallets WHERE org_id = p_org FOR NO KEY UPDATE;
    FOR i IN 1 .. cardinality(p_keys) LOOP
        IF w.org_id IS NULL THEN
            status := 'unknown_org'; cost := p_costs[i]; available := NULL; replayed := false; recharge := false;
        ELSE
            r := ledger_debit_locked(w, p_keys[i], p_actions[i], p_tiers[i], p_qtys[i], p_countries[i],
                                     p_users[i], p_costs[i], p_nows[i]);
            w := r.w;
            v_dirty := v_dirty OR r.dirty;
            status := r.status; cost := r.cost; available := r.available; replayed := r.replayed;
            detail_a := r.detail_a; detail_b := r.detail_b; recharge := r.recharge;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF v_dirty THEN
        PERFORM ledger_save(w, p_nows[cardinality(p_nows)]);
    END IF;
END $$;

-- A hold's reservation can cross the threshold too: its result gains `recharge` likewise.
DROP FUNCTION ledger_hold(text, text, text, text, numeric, text, text, bigint, timestamptz, timestamptz);

CREATE FUNCTION ledger_hold(p_org text, p_key text, p_action text, p_tier text, p_qty numeric,
                            p_country text, p_user text, p_cost bigint, p_expires_at timestamptz,
                            p_now timestamptz,
                            OUT status text, OUT cost bigint, OUT available bigint, OUT replayed boolean,
                            OUT detail_a bigint, OUT detail_b bigint, OUT recharge boolean)
LANGUAGE plpgsql AS $$
DECLARE
    w wallets%ROWTYPE;
    h holds%ROWTYPE;
BEGIN
    replayed := false; cost := p_cost; recharge := false;
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
        -- A reservation lowers the available balance as a debit does: same auto-recharge trigger.
        IF ledger_recharge_due(w, available, p_now) THEN
            w.recharge_resume_at := p_now + ledger_recharge_lease();
            recharge := true;
        END IF;
    END IF;
    PERFORM ledger_save(w, p_now);
END $$;
