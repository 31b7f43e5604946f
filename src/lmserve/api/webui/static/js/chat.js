// One answer from the model, through LM Studio's /api/v0/chat/completions: OpenAI's chat
// completions plus a last `stats` chunk (tokens per second, time to first token, cached
// prompt tokens, why it stopped). Streamed by default (include_usage gives the token
// counts); the settings may turn streaming off.
//
// Stopping aborts the fetch. The server notices the closed connection within one decode
// step, cancels the generation and frees the model's slot; what came so far is kept.

import { ApiError, events, request } from './api.js';

const ENDPOINT = '/api/v0/chat/completions';

// What an answer holds as it grows (responses.js fills the same shape).
function emptyResult() {
  return {
    id: null,
    model: null,
    content: '',
    reasoning: '',
    toolCalls: [],
    mcpCalls: [], // calls the server ran (responses.js): {id, server_label, name, arguments, ...}
    finishReason: null,
    usage: null,
    stats: null,
    stopped: false,
    startedAt: performance.now(),
    firstTokenAt: null,
    endedAt: null,
  };
}

/**
 * Ask for an answer. `onUpdate(result)` is called as it grows; the result is returned when
 * it ends, also when `signal` stopped it (then `stopped` is true). Errors throw ApiError.
 */
export async function generate(body, signal, onUpdate) {
  return collect(onUpdate, async (result) => {
    const response = await request(ENDPOINT, { method: 'POST', body, signal });
    if (body.stream) await readStream(response, result, onUpdate);
    else readWhole(await response.json(), result);
  });
}

/** A fresh result filled by `read(result)`; a stop (an aborted fetch) keeps what came. */
export async function collect(onUpdate, read) {
  const result = emptyResult();
  try {
    await read(result);
  } catch (error) {
    if (error.name !== 'AbortError') throw error;
    result.stopped = true;
    result.finishReason = 'stopped';
  }
  result.endedAt = performance.now();
  onUpdate(result);
  return result;
}

async function readStream(response, result, onUpdate) {
  for await (const event of events(response)) {
    if (!event.data) continue;
    if (event.data === '[DONE]') return;
    const chunk = JSON.parse(event.data);
    if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
    result.id ??= chunk.id;
    result.model ??= chunk.model;
    if (chunk.object === 'stats') {
      result.stats = chunk.stats;
      continue;
    }
    if (chunk.usage) result.usage = chunk.usage;
    for (const choice of chunk.choices || []) {
      const delta = choice.delta || {};
      if (delta.content || delta.reasoning_content || delta.tool_calls) {
        result.firstTokenAt ??= performance.now();
      }
      if (delta.content) result.content += delta.content;
      if (delta.reasoning_content) result.reasoning += delta.reasoning_content;
      for (const call of delta.tool_calls || []) mergeToolCall(result.toolCalls, call);
      if (choice.finish_reason) result.finishReason = choice.finish_reason;
    }
    onUpdate(result);
  }
}

// Streamed tool calls come in pieces: the first names the function, the rest carry parts of
// its arguments, each tagged with the call's index.
function mergeToolCall(calls, piece) {
  const call = (calls[piece.index ?? calls.length] ??= {
    id: piece.id,
    type: 'function',
    function: { name: '', arguments: '' },
  });
  if (piece.id) call.id = piece.id;
  if (piece.function?.name) call.function.name += piece.function.name;
  if (piece.function?.arguments) call.function.arguments += piece.function.arguments;
}

function readWhole(answer, result) {
  const choice = answer.choices?.[0] || {};
  const message = choice.message || {};
  result.id = answer.id;
  result.model = answer.model;
  result.content = message.content || '';
  result.reasoning = message.reasoning_content || '';
  result.toolCalls = message.tool_calls || [];
  result.finishReason = choice.finish_reason;
  result.usage = answer.usage || null;
  result.stats = answer.stats || null;
  result.firstTokenAt = null; // not measurable here: the stats say it
}

/** What the page keeps of an answer beside its text (stored with the message). */
export function answerMeta(result, input) {
  const seconds = (start, end) => (start !== null && end !== null ? (end - start) / 1000 : null);
  return {
    request_id: result.id,
    model: result.model,
    finish_reason: result.finishReason,
    stopped: result.stopped,
    usage: result.usage,
    stats: result.stats,
    // Measured here when the server's stats did not come (a stopped answer has none).
    client: {
      time_to_first_token: seconds(result.startedAt, result.firstTokenAt),
      total_time: seconds(result.startedAt, result.endedAt),
    },
    // From the log stream: what the model received.
    prompt: input?.prompt ?? null,
    prompt_tokens: input?.prompt_tokens ?? null,
    images: input?.images ?? null, // [{id, tokens, width, height}] of each image it saw
    parameters: input?.parameters ?? null,
  };
}
