// LM Studio plugins through the JavaScript SDK (@lmstudio/sdk 1.5.0) against lmserve: a
// generator plugin registered and run as `lms dev` runs one (registerDevelopmentPlugin, then a
// client with the plugin's credentials registering its hook), used through
// client.plugins.createGeneratorHandle; and the tools of the Python test plugin (PLUGIN) used
// through client.plugins.pluginTools.  Each step prints one JSON line, {"step": name, ...}.
// Run: NODE_PATH=<dir with node_modules> LMS_URL=ws://127.0.0.1:PORT PLUGIN=owner/name
//      NONCE=... node plugin_check.cjs
"use strict";

const { LMStudioClient } = require("@lmstudio/sdk");

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

const NONCE = process.env.NONCE;
const GENERATOR = "lmserve-tests/echo-generator";

// The generator: echoes the last user message's text with the nonce, word by word; "fail"
// makes it throw, "hang" makes it wait until aborted.
async function generate(ctl, history) {
  const messages = history.getMessagesArray();
  const last = messages[messages.length - 1].getText();
  if (last === "fail") throw new Error(`generator failed on purpose (${NONCE})`);
  if (last === "hang") {
    await new Promise((_, reject) =>
      ctl.abortSignal.addEventListener("abort", () => reject(ctl.abortSignal.reason)),
    );
  }
  for (const word of [`${NONCE}:`, ...last.split(" ")]) ctl.fragmentGenerated(word + " ");
}

async function main() {
  const baseUrl = process.env.LMS_URL;
  const client = new LMStudioClient({ baseUrl, verboseErrorMessages: false });

  const registration = await client.plugins.registerDevelopmentPlugin({
    manifest: { type: "plugin", runner: "node", owner: "lmserve-tests", name: "echo-generator" },
  });
  report("registered", { hasCredentials: Boolean(registration.clientPasskey) });
  const pluginClient = new LMStudioClient({
    baseUrl,
    clientIdentifier: registration.clientIdentifier,
    clientPasskey: registration.clientPasskey,
    verboseErrorMessages: false,
  });
  const host = pluginClient.plugins.getSelfRegistrationHost();
  host.setGenerator(generate);
  await host.initCompleted();

  const handle = client.plugins.createGeneratorHandle(GENERATOR);
  const fragments = [];
  const answer = await handle.respond("hello from the client", {
    onPredictionFragment: fragment => fragments.push(fragment.content),
  });
  report("generated", { content: answer.content, fragments });

  try {
    await handle.respond("fail");
    report("generatorError", { error: null });
  } catch (error) {
    report("generatorError", { error: String(error.message) });
  }

  const controller = new AbortController();
  setTimeout(() => controller.abort(), 500);
  const cancelled = await handle.respond("hang", { signal: controller.signal });
  report("cancelled", { content: cancelled.content });

  const tools = await client.plugins.pluginTools(process.env.PLUGIN);
  const secret = tools.tools.find(tool => tool.name === "secret_word");
  const context = { status() {}, warn() {}, signal: new AbortController().signal, callId: 0 };
  const result = await secret.implementation({ topic: "owls" }, context);
  let toolError = null;
  try {
    await tools.tools.find(tool => tool.name === "explode").implementation({ topic: "x" }, context);
  } catch (error) {
    toolError = String(error.message);
  }
  report("pluginTools", { names: tools.tools.map(tool => tool.name), result, toolError });
  tools[Symbol.dispose]();

  await registration.unregister();
  try {
    await client.plugins.createGeneratorHandle(GENERATOR).respond("hello again");
    report("afterUnregister", { error: null });
  } catch (error) {
    report("afterUnregister", { error: String(error.message) });
  }
  report("done", {});
  process.exit(0);
}

main().catch(error => {
  report("failed", { error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
});
