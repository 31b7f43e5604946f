// LM Studio's JavaScript SDK (@lmstudio/sdk 1.5.0) sending images to a vision model on lmserve:
// files.prepareImageBase64, then the image in a chat message.  One JSON line per step, for
// tests/test_images_surfaces.py.
// Run: NODE_PATH=<dir with node_modules> LMS_URL=ws://127.0.0.1:PORT MODEL=key IMAGES=b64,b64 node sdk_images.cjs
"use strict";

const { LMStudioClient } = require("@lmstudio/sdk");

function report(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

async function main() {
  const client = new LMStudioClient({ baseUrl: process.env.LMS_URL, verboseErrorMessages: false });
  const model = await client.llm.model(process.env.MODEL);
  const question = process.env.QUESTION;
  const options = { temperature: 0, maxTokens: Number(process.env.MAX_TOKENS) };
  const images = process.env.IMAGES.split(",");
  for (const [index, base64] of images.entries()) {
    const image = await client.files.prepareImageBase64(`picture-${index}.png`, base64);
    report("prepared", { index, type: image.type, sizeBytes: image.sizeBytes });
    const answer = await model.respond([{ role: "user", content: question, images: [image] }], options);
    report("respond", { index, content: answer.content, stats: answer.stats });
  }
  await client[Symbol.asyncDispose]();
  report("done", {});
}

main().catch(error => {
  report("failed", { error: String(error && error.stack ? error.stack : error) });
  process.exit(1);
});
