// A ContextVM client built on the official TypeScript SDK (@contextvm/sdk) and the official MCP
// client (@modelcontextprotocol/sdk). The Rust end-to-end tests run it against a Paygress server.
//
//   node contextvm-client.mjs --relay ws://127.0.0.1:PORT --server NPUB_OR_HEX \
//        --key CLIENT_SECRET_HEX --encryption optional|required|disabled CALLS_JSON
//
// CALLS_JSON is a JSON array of {"name": tool, "arguments": {...}, "_meta"?: {...}}. The client
// connects, lists the tools, makes the calls in order and prints one JSON line per step on stdout:
//   {"step":"tools","tools":[...]}  then  {"step":"call","name":...,"result":{...}}
// Errors go to stderr and the exit code is non-zero.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  NostrClientTransport,
  ApplesauceRelayPool,
  PrivateKeySigner,
  EncryptionMode,
} from '@contextvm/sdk';

function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0 || i + 1 >= process.argv.length) throw new Error(`missing --${name}`);
  return process.argv[i + 1];
}

const modes = {
  optional: EncryptionMode.OPTIONAL,
  required: EncryptionMode.REQUIRED,
  disabled: EncryptionMode.DISABLED,
};

async function main() {
  const relay = arg('relay');
  const server = arg('server');
  const key = arg('key');
  const mode = modes[arg('encryption')];
  if (!mode) throw new Error('--encryption must be optional, required or disabled');
  const calls = JSON.parse(process.argv[process.argv.length - 1]);

  const transport = new NostrClientTransport({
    signer: new PrivateKeySigner(key),
    relayHandler: new ApplesauceRelayPool([relay]),
    serverPubkey: server,
    encryptionMode: mode,
    logLevel: 'error',
  });
  const client = new Client({ name: 'paygress-e2e-contextvm', version: '1.0.0' });
  await client.connect(transport);
  const tools = await client.listTools();
  console.log(JSON.stringify({ step: 'tools', tools: tools.tools }));
  for (const call of calls) {
    const params = { name: call.name, arguments: call.arguments ?? {} };
    if (call._meta) params._meta = call._meta;
    const result = await client.callTool(
      params,
      undefined,
      { timeout: 120000 },
    );
    console.log(JSON.stringify({ step: 'call', name: call.name, result }));
  }
  await client.close();
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`contextvm-client: ${e?.stack ?? e}`);
    process.exit(1);
  },
);
