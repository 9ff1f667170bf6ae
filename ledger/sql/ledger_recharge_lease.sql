-- How long a trigger holds off the next one (models/auto_recharge.py LEASE says the same).
CREATE OR REPLACE FUNCTION ledger_recharge_lease() RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT interval '15 minutes' $$;
