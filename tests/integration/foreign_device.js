// A device written against the Node `nats` package (not Fleetplane's Python code): it connects
// with its own credentials file and inbox prefix, publishes its heartbeat, tries another
// device's, and reads its own key and another's. Prints one JSON line of what happened.
const { connect, credsAuthenticator } = require("nats");
const fs = require("fs");

async function main() {
  const [url, credsPath, device] = process.argv.slice(2);
  const errors = [];
  const nc = await connect({
    servers: url,
    authenticator: credsAuthenticator(fs.readFileSync(credsPath)),
    inboxPrefix: `_INBOX.${device}`,
  });
  (async () => { for await (const s of nc.status()) { if (s.type === "error") errors.push(String(s.data)); } })();
  const hb = (dev, n) => JSON.stringify({ device_id: dev, site: "s1", seq: n });
  nc.publish(`fleet.hb.s1.${device}`, hb(device, 1));
  nc.publish("fleet.hb.s1.victim", hb("victim", 2));
  nc.publish(`fleet.hb.s1.${device}`, hb(device, 3));
  await nc.flush();
  const get = async (key) => {
    try {
      const m = await nc.request(`$JS.API.DIRECT.GET.KV_fleet_desired.$KV.fleet_desired.${key}`, "", { timeout: 3000 });
      return m.headers ? (m.headers.get("Status") || m.headers.code || "value") : "value";
    } catch (e) { return `refused: ${e.code || e.message}`; }
  };
  const own = await get(device);
  const other = await get("victim");
  await nc.flush();
  console.log(JSON.stringify({ own, other, errors }));
  await nc.close();
}
main().catch((e) => { console.log(JSON.stringify({ fatal: String(e) })); process.exit(1); });
