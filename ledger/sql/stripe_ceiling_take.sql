-- One slot under a fleet-wide ceiling of Stripe requests per second (failure model rule 10; the caller is
-- payments/ceiling.py, before every Stripe request). Answers (granted, wait_s, valid_s): granted, send
-- in wait_s seconds (the slot's place in its second) and no later than valid_s seconds from now (the
-- guard of its second: past it the slot is void, the caller takes another); not granted, ask again in
-- wait_s seconds (the next second).
--
-- Windows are the whole seconds of this server's clock, which every worker shares whatever its own clock
-- says. One row per ceiling, updated by one upsert: the first request of a new second resets the row to
-- (that second, 1); later ones add 1 while used < p_limit. The row lock serialises the takers for the
-- length of one statement. The table never grows: a new second overwrites the old one.
--
-- p_guard: no request is sent in the last p_guard seconds of a second, so one that reaches Stripe within
-- p_guard of leaving lands in the second that counted it: at most p_limit requests arrive at Stripe in
-- any second of the clock. Slot i (from 0) of a second is sent at i * (1 - p_guard) / p_limit into it, or
-- at once if that moment has passed: at the ceiling, a second's slots go evenly over its first 1 - p_guard
-- seconds instead of in one burst at its start, so a one-second span straddling two seconds holds about
-- p_limit requests, not up to twice that. A request that comes in the guard waits for the next second.
--
-- If this server's clock steps back, greatest() keeps the later window: requests are counted in it until
-- the clock catches up (fewer slots, never more).
CREATE OR REPLACE FUNCTION stripe_ceiling_take(p_key text, p_limit integer, p_guard double precision,
                                               OUT granted boolean, OUT wait_s double precision,
                                               OUT valid_s double precision)
LANGUAGE plpgsql AS $$
DECLARE
    v_now     double precision := extract(epoch FROM clock_timestamp());
    v_window  bigint := floor(v_now);
    v_start   bigint;
    v_used    integer;
BEGIN
    IF v_now - v_window < 1 - p_guard THEN
        INSERT INTO stripe_ceiling AS c (key, window_start, used) VALUES (p_key, v_window, 1)
        ON CONFLICT (key) DO UPDATE
            SET window_start = greatest(c.window_start, EXCLUDED.window_start),
                used = CASE WHEN c.window_start >= EXCLUDED.window_start THEN c.used + 1 ELSE 1 END
            WHERE c.window_start < EXCLUDED.window_start OR c.used < p_limit
        RETURNING c.window_start, c.used INTO v_start, v_used;
        IF FOUND THEN
            granted := true;
            wait_s := greatest(v_start + (v_used - 1) * (1 - p_guard) / p_limit - v_now, 0);
            valid_s := v_start + 1 - p_guard - v_now;
            RETURN;
        END IF;
    END IF;
    -- Full, or in the guard: ask again at the next second (at least 1 ms on: never a busy loop).
    granted := false;
    wait_s := greatest(v_window + 1 - extract(epoch FROM clock_timestamp()), 0.001);
END $$;
