// The official MCP TypeScript SDK over stdio as a buyer of `paygress-mcp-server --demo`.
// Run by tests/mcp_sdk.rs:
//
//   node mcp-ts-client.mjs v1|v2-auto -- SERVER [ARGS...]
//
// v1: `@modelcontextprotocol/sdk` 1.x (the `initialize` handshake). v2-auto: its successor
// `@modelcontextprotocol/client` 2.x with `versionNegotiation: {mode: 'auto'}` (a
// `server/discover` probe, then the 2026-07-28 revision when the server answers it).
//
// It lists the tools, compiles every schema with the SDK's own JSON Schema validator (ajv),
// buys a pod with a demo token while recording progress notifications, checks that SSH answers
// on the port, tops the pod up, reads its status, asks for a pod that does not exist, and
// validates every result's structuredContent (the typed error body too) against the tool's
// outputSchema (the SDK also does so inside callTool, error results included). Any
// failure, and any warning printed on the console (ajv's "unknown format ... ignored" among
// them), exits non-zero; on success it prints one JSON summary line.
import net from 'node:net';

// The two SDK lines differ in module names and in callTool's signature.
async function sdk(kind) {
  const info = { name: 'paygress-e2e-ts', version: '1.0.0' };
  if (kind === 'v1') {
    const { Client } = await import('@modelcontextprotocol/sdk/client/index.js');
    const { StdioClientTransport } = await import('@modelcontextprotocol/sdk/client/stdio.js');
    const { AjvJsonSchemaValidator } = await import('@modelcontextprotocol/sdk/validation/ajv');
    return {
      client: () => new Client(info),
      StdioClientTransport,
      AjvJsonSchemaValidator,
      callTool: (c, params, options) => c.callTool(params, undefined, options),
    };
  }
  if (kind === 'v2-auto') {
    const { Client } = await import('@modelcontextprotocol/client');
    const { StdioClientTransport } = await import('@modelcontextprotocol/client/stdio');
    const { AjvJsonSchemaValidator } = await import('@modelcontextprotocol/client/validators/ajv');
    return {
      client: () => new Client(info, { versionNegotiation: { mode: 'auto' } }),
      StdioClientTransport,
      AjvJsonSchemaValidator,
      callTool: (c, params, options) => c.callTool(params, options),
    };
  }
  throw new Error(`unknown SDK ${kind}: v1 or v2-auto`);
}

// Everything printed through the console while the client runs counts as a warning.
const noise = [];
for (const level of ['warn', 'error', 'log', 'info', 'debug']) {
  console[level] = (...args) => noise.push(`console.${level}: ${args.map(String).join(' ')}`);
}
process.on('warning', (w) => noise.push(`process warning: ${w.message}`));

const ERROR_TYPES = new Set([
  'invalid_request', 'invalid_spec', 'invalid_token', 'mint_not_allowed', 'token_already_spent',
  'insufficient_payment', 'resource_unavailable', 'pod_creation_failed', 'pod_not_found',
  'payment_failed', 'internal_error',
]);

function check(cond, what) {
  if (!cond) throw new Error(what);
}

function banner(host, port) {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host, port });
    const t = setTimeout(() => { s.destroy(); reject(new Error('no SSH banner in time')); }, 10000);
    s.once('data', (d) => { clearTimeout(t); s.destroy(); resolve(d.subarray(0, 7).toString()); });
    s.once('error', (e) => { clearTimeout(t); reject(e); });
  });
}

async function main() {
  const sep = process.argv.indexOf('--');
  if (sep != 3 || sep + 1 >= process.argv.length) throw new Error('usage: mcp-ts-client.mjs v1|v2-auto -- SERVER [ARGS...]');
  const kind = process.argv[2];
  const { client: makeClient, StdioClientTransport, AjvJsonSchemaValidator, callTool } = await sdk(kind);
  const [command, ...args] = process.argv.slice(sep + 1);
  const transport = new StdioClientTransport({ command, args, stderr: 'ignore' });
  // v1 hands the negotiated revision only to transports that want it (HTTP); stdio does not.
  let negotiated;
  transport.setProtocolVersion = (v) => { negotiated = v; };
  const client = makeClient();
  await client.connect(transport);
  negotiated = client.getNegotiatedProtocolVersion?.() ?? negotiated;
  const summary = { sdk: kind, protocol_version: negotiated, server_name: client.getServerVersion()?.name };
  const listed = await client.listTools();
  summary.tools = listed.tools.map((t) => t.name);
  const ajv = new AjvJsonSchemaValidator();
  const validators = {};
  for (const t of listed.tools) {
    ajv.getValidator(t.inputSchema);
    check(t.outputSchema, `${t.name} has no outputSchema`);
    validators[t.name] = ajv.getValidator(t.outputSchema);
  }
  const validated = [];
  const call = async (name, args, options) => {
    const r = await callTool(client, { name, arguments: args }, options);
    const body = r.structuredContent;
    check(body, `${name}: no structuredContent`);
    // Error results too: their typed body is one branch of the outputSchema.
    const v = validators[name](body);
    check(v.valid, `${name}: structuredContent does not match outputSchema: ${v.errorMessage}`);
    check(JSON.stringify(JSON.parse(r.content[0].text)) === JSON.stringify(body), `${name}: text is not the same JSON`);
    validated.push(r.isError ? `${name} (error)` : name);
    if (r.isError) check(ERROR_TYPES.has(body.error_type), `${name}: untyped error ${JSON.stringify(body)}`);
    return body;
  };

  const offers = await call('get_offers', {});
  const tier = offers.pod_specs[0];
  const token = (await call('get_demo_token', { amount_sats: 50 })).cashu_token;
  const progress = [];
  const pod = await call(
    'spawn_pod',
    { cashu_token: token, pod_spec_id: tier.id, ssh_username: 'alice' },
    { onprogress: (p) => progress.push(p) },
  );
  check(!pod.error_type, `spawn_pod failed: ${JSON.stringify(pod)}`);
  check(pod.duration_seconds === Math.floor(50000 / tier.rate_msats_per_sec), `price: ${JSON.stringify(pod)}`);
  check((await banner(pod.host, pod.node_port)) === 'SSH-2.0', 'no SSH on the port');
  const top = (await call('get_demo_token', { amount_sats: 10 })).cashu_token;
  const up = await call('topup_pod', { pod_npub: pod.pod_npub, cashu_token: top });
  check(up.success === true, `topup_pod: ${JSON.stringify(up)}`);
  const status = await call('get_pod_status', { pod_npub: pod.pod_npub });
  check(status.state === 'running', `status: ${JSON.stringify(status)}`);
  check(status.access.node_port === pod.node_port, `owner access: ${JSON.stringify(status)}`);
  const missing = await call('get_pod_status', { pod_npub: 'npub1doesnotexist' });
  check(missing.error_type === 'pod_not_found', `typed error: ${JSON.stringify(missing)}`);
  // Progress notifications can trail the result by a moment.
  for (let i = 0; i < 100 && progress.length < 4; i++) await new Promise((r) => setTimeout(r, 50));
  Object.assign(summary, {
    progress: progress.map((p) => p.progress),
    progress_total: [...new Set(progress.map((p) => p.total))],
    validated,
    duration_seconds: pod.duration_seconds,
    extended_duration_seconds: up.extended_duration_seconds,
    state: status.state,
  });
  await client.close();
  return summary;
}

main().then(
  (summary) => {
    if (noise.length) {
      process.stderr.write(`FAILED: warnings: ${noise.join('; ')}\n`);
      process.exit(1);
    }
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    process.exit(0);
  },
  (e) => {
    process.stderr.write(`FAILED: ${e?.stack ?? e}\n${noise.join('\n')}\n`);
    process.exit(1);
  },
);
