// Buy a pod from Paygress over ContextVM (MCP over Nostr) with the official @contextvm/sdk and
// @modelcontextprotocol/sdk, in TypeScript.
//
//   npx tsc && node contextvm_client.js --relay ws://127.0.0.1:7777 --server npub1…
//
// The server is `paygress-mcp-server --transport contextvm` (with `--demo` it runs its own
// relay and prints its URL and npub). Against the demo the token comes from get_demo_token;
// otherwise set CASHU_TOKEN. The client's Nostr key is new for each run: it owns the pod, so
// get_pod_status shows it the login details.
import { randomBytes } from 'node:crypto';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  NostrClientTransport,
  ApplesauceRelayPool,
  PrivateKeySigner,
  EncryptionMode,
} from '@contextvm/sdk';

type Json = Record<string, any>;

function arg(name: string): string {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
}

async function call(client: Client, name: string, args: Json): Promise<Json> {
  const r = await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 });
  const body = (r.structuredContent ?? {}) as Json;
  if (r.isError) throw new Error(`${name} failed: ${body.error_type}: ${body.message}`);
  return body;
}

async function main(): Promise<void> {
  const transport = new NostrClientTransport({
    signer: new PrivateKeySigner(randomBytes(32).toString('hex')),
    relayHandler: new ApplesauceRelayPool([arg('relay')]),
    serverPubkey: arg('server'),
    encryptionMode: EncryptionMode.OPTIONAL,
    logLevel: 'error',
  });
  const client = new Client({ name: 'paygress-example', version: '1.0.0' });
  await client.connect(transport);

  const offers = await call(client, 'get_offers', {});
  const tier = offers.pod_specs[0];
  const sats = Math.ceil((tier.rate_msats_per_sec * offers.minimum_duration_seconds) / 1000);
  console.log(`tier ${tier.id}: minimum ${sats} sat`);

  const token: string =
    process.env.CASHU_TOKEN ?? (await call(client, 'get_demo_token', { amount_sats: sats })).cashu_token;
  const pod = await call(client, 'spawn_pod', {
    cashu_token: token,
    pod_spec_id: tier.id,
    ssh_username: 'alice',
  });
  console.log(`pod ${pod.pod_npub} until ${pod.expires_at}`);
  console.log(`ssh: ssh -p ${pod.node_port} ${pod.ssh_username}@${pod.host}`);
  console.log(`password: ${pod.ssh_password}`);

  const status = await call(client, 'get_pod_status', { pod_npub: pod.pod_npub });
  console.log(`state: ${status.state}, access: ${status.access ? status.access.ssh_command : 'none'}`);
  await client.close();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`contextvm_client: ${e?.stack ?? e}`);
    process.exit(1);
  },
);
