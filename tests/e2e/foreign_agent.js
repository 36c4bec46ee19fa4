// A device agent in Node, written from the published contract (docs/contract.md: desired state,
// heartbeats, the config hash and its vectors, a device's subjects and inbox prefix), not from
// Fleetplane's Python. Libraries: the npm `nats` client and the stock RFC 8785 package
// `canonicalize`. It
//   1. checks the committed config-hash vectors with `canonicalize` (prints {"vectors": [...failed]}),
//   2. reads its desired state by direct get and follows its key `$KV.fleet_desired.<device>`,
//   3. writes the config to a file and reports sha256(JCS(config read back from the file)),
//   4. heartbeats on `fleet.hb.<site>.<device>` every interval.
// Prints one JSON line per event; stops on SIGTERM.
// Usage: node foreign_agent.js URL CREDS DEVICE SITE STATE_DIR VECTORS INTERVAL_MS
const { connect, credsAuthenticator } = require("nats");
const canonicalize = require("canonicalize");
const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const [url, credsPath, device, site, stateDir, vectorsPath, intervalText] = process.argv.slice(2);
const interval = Number(intervalText || "1000");
const say = (obj) => console.log(JSON.stringify(obj));
const configHash = (config) => crypto.createHash("sha256").update(canonicalize(config), "utf8").digest("hex");

function checkVectors() {
  const failed = [];
  for (const v of JSON.parse(fs.readFileSync(vectorsPath, "utf8")).vectors) {
    if (canonicalize(v.config) !== v.canonical || configHash(v.config) !== v.sha256) failed.push(v.name);
  }
  say({ vectors: failed });
}

async function main() {
  checkVectors();
  const configFile = path.join(stateDir, "config.json");
  let snapshotId = null;
  let seq = Date.now();
  const nc = await connect({
    servers: url.split(","),
    authenticator: credsAuthenticator(fs.readFileSync(credsPath)),
    inboxPrefix: `_INBOX.${device}`, // a device may read replies only under its own prefix
    maxReconnectAttempts: -1,
  });
  const onDiskHash = () => {
    try { return configHash(JSON.parse(fs.readFileSync(configFile, "utf8"))); } catch (e) { return null; }
  };
  const apply = (data, headers) => {
    const op = headers && headers.get("KV-Operation");
    if (op === "DEL" || op === "PURGE" || data.length === 0) return;
    const desired = JSON.parse(new TextDecoder().decode(data));
    if (desired.device_id !== device) return;
    fs.writeFileSync(configFile + ".tmp", JSON.stringify(desired.config, null, 2));
    fs.renameSync(configFile + ".tmp", configFile);
    snapshotId = desired.snapshot_id;
    say({ applied: snapshotId, hash: onDiskHash(), desired_hash: desired.config_hash });
    beat();
  };
  const beat = () => {
    seq += 1;
    const hb = {
      device_id: device, site, seq, at: new Date().toISOString(), snapshot_id: snapshotId,
      config_hash: snapshotId === null ? null : onDiskHash(), health: "ok", metrics: {}, agent_version: "node-agent/1",
    };
    nc.publish(`fleet.hb.${site}.${device}`, JSON.stringify(hb));
  };
  const sub = nc.subscribe(`$KV.fleet_desired.${device}`);
  (async () => { for await (const m of sub) apply(m.data, m.headers); })();
  try {
    const m = await nc.request(`$JS.API.DIRECT.GET.KV_fleet_desired.$KV.fleet_desired.${device}`, "", { timeout: 5000 });
    if (!m.headers || !m.headers.get("Status")) apply(m.data, m.headers);
  } catch (e) { say({ get_failed: String(e) }); }
  const timer = setInterval(beat, interval);
  beat();
  say({ started: device });
  process.on("SIGTERM", async () => { clearInterval(timer); await nc.drain(); process.exit(0); });
}
main().catch((e) => { say({ fatal: String(e) }); process.exit(1); });
