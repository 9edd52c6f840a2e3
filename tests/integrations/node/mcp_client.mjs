// The official TypeScript MCP SDK client against an MCP server on stdio or streamable HTTP (here
// `stage0 mcp-proxy`), driven by tests/integrations/test_mcp_clients.py and test_mcp_http.py.
//
//   node mcp_client.mjs PLAN.json
//
// PLAN: {"command": ..., "args": [...], "env": {...}, "cwd": ..., "protocolVersion": "2025-06-18"
// (optional: the revision the client offers in `initialize`; default the SDK's latest),
// "timeoutMs": 60000, "calls": [{"name": ..., "arguments": {...}}, ...]}; or, for streamable
// HTTP, {"url": "http://127.0.0.1:PORT/mcp", "headers": {"Authorization": "Bearer ..."}, ...}
// instead of "command" / "args" / "env" / "cwd" (the SDK's StreamableHTTPClientTransport).
//
// Prints one JSON document on stdout: the SDK version, the negotiated protocol revision, the
// server's info, the listed tools, and for each call either {"result": ...} (as `callTool`
// returned it, so after the SDK validated any structuredContent against the tool's outputSchema)
// or {"error": {"code": ..., "message": ...}} (what `callTool` threw). The server's standard
// error is passed through to ours.
import { readFileSync } from "node:fs";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

// (the package's `exports` map sends `@modelcontextprotocol/sdk/package.json` to dist/esm/)
const sdkVersion = JSON.parse(
  readFileSync(new URL("./node_modules/@modelcontextprotocol/sdk/package.json", import.meta.url)),
).version;

// A transport around the SDK's stdio transport that can offer another protocol revision and
// records the one the client settled on (the Client calls setProtocolVersion after initialize).
class OfferingTransport {
  constructor(inner, offer) {
    this.inner = inner;
    this.offer = offer;
    this.negotiated = undefined;
    inner.onmessage = (message, extra) => this.onmessage?.(message, extra);
    inner.onerror = (error) => this.onerror?.(error);
    inner.onclose = () => this.onclose?.();
  }

  start() {
    return this.inner.start();
  }

  send(message, options) {
    if (this.offer && message.method === "initialize") {
      message = { ...message, params: { ...message.params, protocolVersion: this.offer } };
    }
    return this.inner.send(message, options);
  }

  close() {
    return this.inner.close();
  }

  setProtocolVersion(version) {
    this.negotiated = version;
    this.inner.setProtocolVersion?.(version); // the HTTP transport sends it as a header
  }

  get sessionId() {
    return this.inner.sessionId;
  }
}

async function main() {
  const plan = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const options = { timeout: plan.timeoutMs ?? 60000 };
  const inner = plan.url
    ? new StreamableHTTPClientTransport(new URL(plan.url), {
        requestInit: { headers: plan.headers ?? {} },
      })
    : new StdioClientTransport({
        command: plan.command,
        args: plan.args ?? [],
        env: plan.env,
        cwd: plan.cwd,
        stderr: "inherit",
      });
  const transport = new OfferingTransport(inner, plan.protocolVersion);
  const client = new Client({ name: "stage0-tests-ts-client", version: "0.0.1" });
  await client.connect(transport, options);
  const out = {
    sdkVersion,
    protocolVersion: transport.negotiated,
    server: client.getServerVersion(),
    tools: [],
    calls: [],
  };
  try {
    out.tools = (await client.listTools(undefined, options)).tools;
    for (const call of plan.calls ?? []) {
      try {
        const result = await client.callTool(
          { name: call.name, arguments: call.arguments ?? {} },
          undefined,
          options,
        );
        out.calls.push({ name: call.name, result });
      } catch (error) {
        out.calls.push({
          name: call.name,
          error: { code: error?.code ?? null, message: String(error?.message ?? error) },
        });
      }
    }
  } finally {
    await client.close();
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((error) => {
  process.stderr.write(`mcp_client.mjs: ${error?.stack ?? error}\n`);
  process.exit(1);
});
