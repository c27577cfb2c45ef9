// Holds the simulator against FLORA's official TypeScript SDK (@flora-ai/flora).
//
// `node sdk_check.mjs` (the API): env FLORA_SDK_DIR (a directory whose node_modules holds @flora-ai/flora),
// FLORA_BASE_URL (the simulator's /api/v1 base), FLORA_API_KEY, SIM_ADMIN_URL (the simulator's /_sim base).
// `node sdk_check.mjs webhooks CASES.json` (signed callbacks): each case {name, body_b64, headers, secret,
// now_ms} goes through `client.webhooks.unwrap(rawBody, headers, secret)`; the report says, per case, the
// parsed event or the error's class and message.
// Prints one JSON object with what the SDK saw; the pytest side decides pass or fail.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';

const sdkDir = path.resolve(process.env.FLORA_SDK_DIR);
const require = createRequire(path.join(sdkDir, 'package.json'));
const sdk = require('@flora-ai/flora');
const FLORA = sdk.FLORA ?? sdk.default;
const baseURL = process.env.FLORA_BASE_URL;
const apiKey = process.env.FLORA_API_KEY;
const admin = process.env.SIM_ADMIN_URL;

const pkg = path.join(sdkDir, 'node_modules', '@flora-ai', 'flora', 'package.json');
const sdkVersion = JSON.parse(readFileSync(pkg, 'utf8')).version;

if (process.argv[2] === 'webhooks') {
  const cases = JSON.parse(readFileSync(process.argv[3], 'utf8'));
  const webhooks = new FLORA({ apiKey: 'sk_unused', baseURL: 'http://127.0.0.1:9' }).webhooks;
  const results = {};
  for (const c of cases) {
    const body = new Uint8Array(Buffer.from(c.body_b64, 'base64'));  // the exact raw bytes
    try {
      const event = await webhooks.unwrap(body, c.headers, c.secret, { now: () => c.now_ms });
      results[c.name] = { ok: true, event };
    } catch (err) {
      results[c.name] = { ok: false, error: err?.constructor?.name ?? String(err), message: String(err?.message) };
    }
  }
  console.log(JSON.stringify({ sdk_version: sdkVersion, results }));
  process.exit(0);
}

const client = new FLORA({ baseURL, apiKey, maxRetries: 0, timeout: 10_000 });
const report = { sdk_version: sdkVersion };

async function errorName(promise) {
  try {
    await promise;
    return null;
  } catch (err) {
    return err?.constructor?.name ?? String(err);
  }
}

async function setFaults(knobs) {
  const resp = await fetch(`${admin}/faults`, { method: 'POST', body: JSON.stringify(knobs) });
  if (!resp.ok) throw new Error(`faults: HTTP ${resp.status}`);
}

// 1. Auto-pagination over every run, 100 per page.
const listed = [];
for await (const run of client.techniques.runs.list({ limit: 100 })) listed.push(run);
report.listed_ids = listed.map((r) => r.run_id);
report.first_item = listed[0] ?? null;

// 2. Retrieve each of a few runs through the nested route, by tech_ id and by slug.
report.retrieved = [];
for (const item of listed.slice(0, 3)) {
  const run = await client.techniques.runs.retrieve(item.run_id, { techniqueId: item.technique.technique_id });
  report.retrieved.push(run);
}

// 3. Typed errors.
const badKey = new FLORA({ baseURL, apiKey: 'sk_live_not_the_key', maxRetries: 0 });
report.bad_key_error = await errorName(badKey.techniques.runs.list({ limit: 1 }));
report.not_found_error = await errorName(
  client.techniques.runs.retrieve('run_does_not_exist', { techniqueId: 'cctv-cam' }),
);
report.bad_request_error = await errorName(client.techniques.runs.list({ limit: 1000 }));

// 4. Create a run.
report.created = await client.techniques.runs.create('cctv-cam', {
  inputs: [{ id: 'prompt', type: 'text', value: 'a fox at dusk' }],
  mode: 'async',
});

// 4b. Generations: auto-paginated list, create through POST /generate, retrieve through /runs/{id}.
const generations = [];
for await (const gen of client.generations.list({ limit: 100 })) generations.push(gen);
report.generation_ids = generations.map((g) => g.generation_id);
report.first_generation = generations[0] ?? null;
report.generation_ticket = await client.generations.create({
  project_id: 'prj_sim1alpha', workspace_id: 'ws_sim4f10ra', prompt: 'a fox at dusk', type: 'video',
});
report.generation_retrieved = await client.generations.retrieve(report.generation_ticket.run_id);

// 5. 429s: the SDK retries them, waiting what retry-after-ms says, then gives up with RateLimitError.
await setFaults({ rate_limit_share: 1.0, retry_after: 0.05, retry_after_mode: 'ms' });
const limited = new FLORA({ baseURL, apiKey, maxRetries: 2 });
const started = Date.now();
report.rate_limit_error = await errorName(limited.techniques.runs.list({ limit: 1 }));
report.rate_limit_ms = Date.now() - started;
await setFaults({ rate_limit_share: 0.0 });

console.log(JSON.stringify(report));
