// A platform team's backend in Node (built-in fetch, http and crypto; no packages) driving the billing API:
// create a key, subscribe, register a webhook endpoint, debit until refused, read the balance, and receive a
// webhook whose Standard Webhooks signature it verifies. Prints one JSON line of what it saw.
//   node node_client.mjs <api_url> <platform_key> <org_id> <event_type>
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";

const [api, platformKey, org, eventType] = process.argv.slice(2);

async function call(key, method, path, body, idempotencyKey) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const res = await fetch(api + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, type: res.headers.get("content-type"), json: text ? JSON.parse(text) : null };
}

function expect(cond, what, answer) {
  if (!cond) {
    console.error(`node client: ${what}: ${JSON.stringify(answer)}`);
    process.exit(1);
  }
}

// Standard Webhooks: HMAC-SHA256 over "id.timestamp.body" with the secret's base64 bytes after "whsec_".
function verify(secret, headers, body) {
  const id = headers["webhook-id"], ts = headers["webhook-timestamp"], sigs = headers["webhook-signature"] ?? "";
  if (!id || !ts) return false;
  if (Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key).update(`${id}.${ts}.${body}`).digest();
  return sigs.split(" ").some((s) => {
    const [version, sig] = s.split(",");
    const given = Buffer.from(sig ?? "", "base64");
    return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
  });
}

const received = [];
let secret = null;
let onEvent = null;
const server = createServer((req, res) => {
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    const ok = secret !== null && verify(secret, req.headers, body);
    res.writeHead(ok ? 204 : 400).end();
    if (ok) {
      received.push({ id: req.headers["webhook-id"], event: JSON.parse(body) });
      onEvent?.();
    } else {
      received.push({ invalid: true });
    }
  });
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const hookUrl = `http://127.0.0.1:${server.address().port}/billing-events`;

// 1. An admin key for the organization, made with the platform key (shown once).
const created = await call(platformKey, "POST", "/v1/api-keys", { role: "admin", org_id: org }, `${org}-key`);
expect(created.status === 201 && created.json.key, "create an admin key", created);
const admin = created.json.key;

// 2. Subscribe to starter (3,000 credits a month); the kit's organizations have a working card.
const sub = await call(admin, "POST", `/v1/orgs/${org}/subscription`,
  { plan: "starter", seats: 1, interval: "month", trial_days: 0, email: `billing@${org}.example` }, `${org}-sub`);
expect(sub.status === 201 && sub.json.plan === "starter", "subscribe", sub);

// 3. A webhook endpoint for the organization's events (an organization must exist to be reached).
const hook = await call(admin, "POST", "/v1/webhook-endpoints", { url: hookUrl, events: [eventType], org_id: org },
  `${org}-hook`);
expect(hook.status === 201 && hook.json.secret, "register a webhook endpoint", hook);
secret = hook.json.secret;

// 4. Debit 500 credits at a time (ai_chat, smart tier, 100 messages) until refused.
let debits = 0, refusal = null;
for (let i = 0; i < 20 && refusal === null; i++) {
  const d = await call(admin, "POST", `/v1/orgs/${org}/debits`, { action: "ai_chat", tier: "smart", quantity: "100" },
    `${org}-debit-${i}`);
  if (d.status === 201) debits += 1;
  else refusal = d;
}
expect(refusal !== null && refusal.status === 403, "a debit past the balance is refused", refusal);

// 5. The balance.
const balance = await call(admin, "GET", `/v1/orgs/${org}/balance`);
expect(balance.status === 200, "read the balance", balance);

// 6. Wait for a signed webhook (the engine delivers it at least once).
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error(`no webhook within 120 s: ${JSON.stringify(received)}`)), 120_000);
  onEvent = () => { clearTimeout(timer); resolve(); };
  if (received.some((r) => !r.invalid)) onEvent();
});
server.close();
console.log(JSON.stringify({
  debits, refusal_status: refusal.status, refusal_type: refusal.json.type, refusal_content_type: refusal.type,
  available: balance.json.available, webhook: received.find((r) => !r.invalid), invalid: received.filter((r) => r.invalid).length,
}));
process.exit(0);
