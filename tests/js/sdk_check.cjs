// LM Studio's JavaScript SDK (@lmstudio/sdk 1.5.0) against lmserve: each step prints one JSON
// line, {"step": name, ...what it saw}, for tests/test_lmstudio_sdk_js.py to check.
// Run: NODE_PATH=<dir with node_modules> LMS_URL=ws://127.0.0.1:PORT MODEL=key node sdk_check.cjs
"use strict";

const { LMStudioClient } = require("@lmstudio/sdk");

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

async function main() {
  const client = new LMStudioClient({ baseUrl: process.env.LMS_URL, verboseErrorMessages: false });
  const key = process.env.MODEL;

  const downloaded = await client.system.listDownloadedModels();
  report("listDownloaded", { models: downloaded.map(m => ({ key: m.modelKey, type: m.type })) });
  const loaded = await client.llm.listLoaded();
  report("listLoaded", { identifiers: loaded.map(m => m.identifier) });

  const model = await client.llm.model(key);
  report("model", { identifier: model.identifier, contextLength: await model.getContextLength() });

  const answer = await model.respond("Name a fruit.", { temperature: 0, maxTokens: 12 });
  report("respond", { content: answer.content, stats: answer.stats });

  const prediction = model.respond("Count from one to ten.", { temperature: 0, maxTokens: 16 });
  const fragments = [];
  for await (const fragment of prediction) fragments.push(fragment.content);
  const streamed = await prediction.result();
  report("stream", { fragments, content: streamed.content, stats: streamed.stats });

  const completion = await model.complete("The capital of France is", { temperature: 0, maxTokens: 8 });
  report("complete", { content: completion.content });

  const schema = {
    type: "object",
    properties: { name: { type: "string", maxLength: 20 }, age: { type: "integer" } },
    required: ["name", "age"],
  };
  // Greedy, and room to close the object: sampled, an age can run on past the cap.
  const structured = await model.respond("Describe a person.", {
    maxTokens: 120,
    temperature: 0,
    structured: { type: "json", jsonSchema: schema },
  });
  report("structured", { content: structured.content });

  const long = model.respond("Write a very long story.", { maxTokens: 2000 });
  let seen = 0;
  for await (const _ of long) {
    seen += 1;
    if (seen === 3) long.cancel();
  }
  report("cancel", { fragments: seen, stats: (await long.result()).stats });

  const embedder = await client.embedding.model(key);
  const { embedding } = await embedder.embed("The cat sat on the mat.");
  report("embed", { embedding });

  try {
    await client.llm.model("no-such-model");
    report("unknownModel", { title: null });
  } catch (error) {
    report("unknownModel", { title: error.title, message: error.message });
  }

  await client[Symbol.asyncDispose]();
  report("done", {});
}

main().catch(error => {
  report("failed", { error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
});
