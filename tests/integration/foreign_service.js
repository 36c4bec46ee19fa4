// An internal service written against the published contract alone (docs/contract/), with the
// Node `nats` package and the stock JSON Schema validator `ajv` — none of Fleetplane's code. It
// finds each command's subject in asyncapi.json, builds its body and checks it against the
// command's schema before sending, validates every reply against the reply's schema and every
// event the reply names (read from the log by sequence, with a direct get) against that event
// type's schema. Then it sends bodies the schemas refuse and checks that the service refuses
// them too, naming the same field. Prints one JSON line: what it did and every mismatch.
const { connect, credsAuthenticator } = require("nats");
const Ajv2020 = require("ajv/dist/2020");
const fs = require("fs");
const path = require("path");

const [url, operatorCreds, operatorInbox, auditorCreds, auditorInbox, contractDir] = process.argv.slice(2);
const problems = [];
const counts = { commands: 0, replies: 0, events: 0, refusals: 0 };
const eventTypes = new Set();
const sent = new Set();

const ajv = new Ajv2020({ strict: false, allErrors: false, validateFormats: false });
const load = (file) => JSON.parse(fs.readFileSync(path.join(contractDir, file), "utf8"));
const validators = {};
for (const folder of ["commands", "replies", "events"]) {
  for (const file of fs.readdirSync(path.join(contractDir, folder))) {
    validators[`${folder}/${file}`] = ajv.compile(load(`${folder}/${file}`));
  }
}
const asyncapi = load("asyncapi.json");
// the subject of each command, from the AsyncAPI document: messages name `<service>.<command>`
const subjects = {};
for (const channel of Object.values(asyncapi.channels)) {
  for (const ref of Object.values(channel.messages || {})) {
    const message = asyncapi.components.messages[ref.$ref.split("/").pop()];
    if (channel.address && channel.address.startsWith("fleet.cmd.")) subjects[message.name] = channel.address;
  }
}

// The field a schema error is about, written as the services write `error.field` (docs/contract.md).
function fieldOf(error) {
  const parts = error.instancePath.split("/").filter(Boolean);
  if (error.keyword === "required") parts.push(error.params.missingProperty);
  if (error.keyword === "additionalProperties") parts.push(error.params.additionalProperty);
  let out = "";
  for (const part of parts) out += /^\d+$/.test(part) ? `[${part}]` : (out ? `.${part}` : part);
  return out;
}

let ops, audit;
const enc = (v) => new TextEncoder().encode(JSON.stringify(v));
const dec = (data) => JSON.parse(new TextDecoder().decode(data));

async function readEvent(ref) {
  const msg = await audit.request("$JS.API.DIRECT.GET.FLEET_EVENTS", enc({ seq: ref.seq }), { timeout: 5000 });
  if (msg.headers && msg.headers.get("Nats-Subject") !== ref.subject) {
    problems.push({ event: ref, why: `stored on ${msg.headers.get("Nats-Subject")}` });
  }
  const event = dec(msg.data);
  const check = validators[`events/${event.type}.json`];
  counts.events += 1;
  eventTypes.add(event.type);
  if (!check) problems.push({ event: ref, why: `no schema for event type ${event.type}` });
  else if (!check(event)) problems.push({ event: ref, type: event.type, errors: check.errors });
}

// Send one command: the body must pass its own schema first; the reply must pass the reply's.
async function send(key, body, { expectOk = true } = {}) {
  const request = validators[`commands/${key}.json`];
  if (!request(body)) problems.push({ command: key, body, why: "my own body fails the schema", errors: request.errors });
  counts.commands += 1;
  sent.add(key);
  const msg = await ops.request(subjects[key], enc(body), { timeout: 20000 });
  const reply = dec(msg.data);
  const check = validators[`replies/${key}.json`];
  counts.replies += 1;
  if (!check(reply)) problems.push({ command: key, reply, errors: check.errors });
  if (expectOk && !reply.ok) problems.push({ command: key, body, why: "refused", error: reply.error });
  for (const ref of reply.events || []) await readEvent(ref);
  return reply;
}

// A body the schema refuses must be refused by the service, naming the same field.
async function refused(key, body) {
  const request = validators[`commands/${key}.json`];
  if (request(body)) { problems.push({ command: key, body, why: "the schema accepts it" }); return; }
  const field = fieldOf(request.errors[0]);
  const msg = await ops.request(subjects[key], enc(body), { timeout: 20000 });
  const reply = dec(msg.data);
  counts.refusals += 1;
  if (!validators[`replies/${key}.json`](reply)) problems.push({ command: key, reply, why: "refusal shape" });
  if (reply.ok || reply.error.field !== field) {
    problems.push({ command: key, body, schema_field: field, service_error: reply.error || "accepted" });
  }
}

async function main() {
  ops = await connect({ servers: url, authenticator: credsAuthenticator(fs.readFileSync(operatorCreds)),
                        inboxPrefix: operatorInbox });
  audit = await connect({ servers: url, authenticator: credsAuthenticator(fs.readFileSync(auditorCreds)),
                          inboxPrefix: auditorInbox });
  const id = (n) => `${n}-${Date.now().toString(36)}`;
  const site = id("plant");
  await send("registry.add_site", { command_id: id("c"), site_id: site, name: "Plant", labels: { region: "eu" } });
  await send("registry.get_site", { site_id: site });
  await send("registry.list_sites", {});
  const devices = [1, 2, 3, 4].map((n) => ({ device_id: `${site}-d${n}`, site_id: site, labels: { tier: "edge" } }));
  const report = await send("registry.import_devices", { command_id: id("c"), devices });
  if (report.result.added !== 4) problems.push({ why: "import", report });
  await send("registry.update_site", { site_id: site, name: "Plant 1", windows: ["Mon-Sun 00:00-24:00 UTC"] });
  await send("registry.add_device", { device_id: `${site}-gw`, site_id: site, kind: "gateway" });
  await send("registry.update_device", { device_id: `${site}-gw`, metadata: { rack: 4 } });
  const other = id("hall");
  await send("registry.add_site", { site_id: other });
  await send("registry.move_device", { device_id: `${site}-gw`, site_id: other });
  await send("registry.retire_device", { device_id: `${site}-gw` });
  await send("registry.retire_site", { site_id: other, reason: "closed" });
  await send("registry.relabel_device", { device_id: devices[0].device_id, labels: { tier: "edge", line: "3" } });
  await send("registry.get_device", { device_id: devices[0].device_id });
  await send("registry.list_devices", { site_id: site, limit: 10 });
  const created = await send("snapshot.create", {
    command_id: id("c"), name: id("cfg"), config: { gain: 1.5, "site name": "Zürich ✓", nested: [1, { a: null }] },
    artifacts: { app: "1.2.3" }, overrides: { [site]: { gain: 2 } } });
  const snapshot = created.result.snapshot_id;
  await send("snapshot.get", { snapshot_id: snapshot });
  await send("snapshot.list", {});
  await send("snapshot.diff", { a: snapshot, b: snapshot });
  // rollout start from its schema's fields: structured waves, canary and gates, 1-based waves
  const start = { snapshot_id: snapshot, target: `site=${site}`, canary: { count: 1 }, waves: [50, 100],
                  bake_seconds: 0, apply_timeout_seconds: 600, min_healthy: 0.5,
                  metrics: [{ metric: "error_rate", aggregate: "p95", op: "<=", value: 0.02 }],
                  approve_after: [1], on_failure: "pause" };
  const dry = await send("rollout.start", { ...start, dry_run: true });
  if (!dry.result.dry_run || dry.result.plan.length !== 3) problems.push({ why: "dry run", dry });
  const rolloutId = id("r");
  const commandId = id("c");
  const started = await send("rollout.start", { ...start, command_id: commandId, rollout_id: rolloutId });
  // the resend rule: the same command_id again gets the same reply and writes nothing more
  const again = await send("rollout.start", { ...start, command_id: commandId, rollout_id: rolloutId });
  if (JSON.stringify(again.events) !== JSON.stringify(started.events)) problems.push({ why: "resend", started, again });
  await send("rollout.get", { rollout_id: rolloutId });
  await send("rollout.ignore_windows", { rollout_id: rolloutId, reason: "emergency" });
  await send("rollout.promote", { rollout_id: rolloutId }, { expectOk: false });  // not held yet: refused
  await send("rollout.pause", { rollout_id: rolloutId, reason: "checking" });
  await send("rollout.resume", { rollout_id: rolloutId });
  await send("rollout.rollback", { rollout_id: rolloutId, plan_only: true });
  await send("rollout.abort", { rollout_id: rolloutId, reason: "done checking" });
  await send("rollout.list", {});
  await send("rollout.what_if", { rollout_id: rolloutId, min_healthy: 0.99 });
  await send("snapshot.mark_good", { snapshot_id: snapshot, target: `site=${site}` });
  await send("drift.acknowledge", { device_id: devices[0].device_id }, { expectOk: false });  // not drifted: conflict
  await send("drift.reconcile", { device_id: devices[1].device_id }, { expectOk: false });
  await send("registry.retire_device", { device_id: devices[3].device_id, reason: "scrapped" });
  await send("snapshot.retire", { snapshot_id: snapshot, reason: "superseded" });

  await refused("registry.add_site", { site_id: "not an id" });
  await refused("registry.add_site", { site_id: "s-x", colour: "red" });
  await refused("registry.add_device", { device_id: "d-x" });
  await refused("rollout.start", { snapshot_id: snapshot, waves: [0, 100] });
  await refused("rollout.start", { snapshot_id: snapshot, waves: "10,50,100" });
  await refused("rollout.start", { snapshot_id: snapshot, metrics: [{ metric: "error_rate", op: "=", value: 1 }] });
  await refused("rollout.start", { snapshot_id: snapshot, min_healthy: 1.5 });
  await refused("rollout.start", { snapshot_id: snapshot, approve_after: [0] });
  await refused("rollout.what_if", { since_seconds: 0 });
  await refused("snapshot.create", { name: "x" });

  // and the whole log as it stands, every event of every type against its schema
  const info = dec((await audit.request("$JS.API.STREAM.INFO.FLEET_EVENTS", enc({}), { timeout: 5000 })).data);
  for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq += 1) {
    const msg = await audit.request("$JS.API.DIRECT.GET.FLEET_EVENTS", enc({ seq }), { timeout: 5000 });
    await readEvent({ seq, subject: msg.headers.get("Nats-Subject") });
  }
  counts.log = info.state.last_seq - info.state.first_seq + 1;

  console.log(JSON.stringify({ counts, sent: [...sent].sort(), event_types: [...eventTypes].sort(), problems }));
  await ops.close();
  await audit.close();
}
main().catch((e) => { console.log(JSON.stringify({ fatal: String(e.stack || e), counts, problems })); process.exit(1); });
