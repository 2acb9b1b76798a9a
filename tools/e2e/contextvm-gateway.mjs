// A ContextVM gateway built on the official TypeScript SDK (@contextvm/sdk's NostrMCPGateway):
// it starts a stdio MCP server as a child process and serves it over Nostr relays under its own
// key, the way the seed documents' `gateway-cli --server ./start-paygress-context-vm.sh` does.
//
//   node contextvm-gateway.mjs --relay ws://127.0.0.1:PORT --key SERVER_SECRET_HEX \
//        --encryption optional|required|disabled [--inject-client-pubkey] -- COMMAND [ARGS...]
//
// --inject-client-pubkey turns on the SDK's injectClientPubkey: each request reaches the
// server with the calling client's pubkey in `_meta.clientPubkey`.
// The child gets this process's environment. Once both sides are started it prints one JSON
// line on stdout: {"step":"ready","pubkey":HEX}. It stops the gateway (and with it the child)
// when its own stdin closes or on SIGTERM. Errors go to stderr and the exit code is non-zero.
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import {
  NostrMCPGateway,
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
  const key = arg('key');
  const mode = modes[arg('encryption')];
  if (!mode) throw new Error('--encryption must be optional, required or disabled');
  const sep = process.argv.indexOf('--');
  if (sep < 0 || sep + 1 >= process.argv.length) throw new Error('missing -- COMMAND');
  const [command, ...args] = process.argv.slice(sep + 1);
  const inject = process.argv.slice(0, sep).includes('--inject-client-pubkey');

  const signer = new PrivateKeySigner(key);
  const gateway = new NostrMCPGateway({
    mcpClientTransport: new StdioClientTransport({
      command,
      args,
      env: { ...process.env },
      stderr: 'inherit',
    }),
    nostrTransportOptions: {
      signer,
      relayHandler: new ApplesauceRelayPool([relay]),
      encryptionMode: mode,
      isAnnouncedServer: false,
      publishRelayList: false,
      injectClientPubkey: inject,
      logLevel: 'error',
    },
  });
  await gateway.start();
  console.log(JSON.stringify({ step: 'ready', pubkey: await signer.getPublicKey() }));

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    await gateway.stop().catch(() => undefined);
    process.exit(0);
  };
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(`contextvm-gateway: ${e?.stack ?? e}`);
  process.exit(1);
});
