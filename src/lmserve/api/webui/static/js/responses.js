// One answer through OpenAI's /v1/responses, for a conversation with MCP servers switched on
// (mcp.js): the server lists their tools, offers them to the model, runs the calls it makes
// and runs it again, all in one streamed response. The page keeps nothing there (store:
// false) and sends the whole branch as input items, earlier calls included, so the model
// sees what they returned. The result has chat.js's shape, plus `mcpCalls`.
//
// The Responses API has no stop strings, penalties or logit_bias: those settings apply to
// chat completions only. Answers with MCP servers always stream.

import { ApiError, events, request } from './api.js';
import { collect } from './chat.js';
import { requestMessage } from './images.js';

const ENDPOINT = '/v1/responses';
const SAMPLING = ['temperature', 'top_p', 'top_k', 'repeat_penalty', 'seed'];
const CHOICES = ['auto', 'none', 'required'];

/** Ask for an answer; as chat.js's generate(), with the calls in `result.mcpCalls`. */
export async function respond(body, signal, onUpdate) {
  return collect(onUpdate, async (result) => {
    const response = await request(ENDPOINT, { method: 'POST', body, signal });
    await readStream(response, result, onUpdate);
  });
}

/** The branch's stored messages as input items: text and images, and the calls an answer made. */
export async function inputItems(conversationId, messages) {
  const items = [];
  for (const message of messages) {
    if (message.role === 'tool') continue; // the page writes none (only an import could)
    if (message.role === 'user' || message.role === 'system') {
      const { content } = await requestMessage(conversationId, message);
      items.push({ role: message.role, content: inputContent(content) });
      continue;
    }
    for (const call of message.mcp_calls || []) {
      const { id, server_label, name, arguments: args, output, error } = call;
      items.push({ type: 'mcp_call', id, server_label, name, arguments: args, output, error });
    }
    if (message.content || !message.tool_calls?.length) {
      items.push({ role: 'assistant', content: message.content });
    }
    for (const call of message.tool_calls || []) {
      items.push({
        type: 'function_call', call_id: call.id, name: call.function.name,
        arguments: call.function.arguments,
      });
    }
  }
  return items;
}

// A chat message's content (text, or image_url and text parts) as Responses content.
function inputContent(content) {
  if (!Array.isArray(content)) return content;
  return content.map((part) =>
    part.type === 'image_url'
      ? { type: 'input_image', image_url: part.image_url.url }
      : { type: 'input_text', text: part.text },
  );
}

/** The request for `items` under `settings`, with `servers` (mcp.json names) as mcp tools. */
export function responsesBody(settings, items, servers) {
  const body = { model: settings.model, input: items, stream: true, store: false };
  if (settings.system_prompt) body.instructions = settings.system_prompt;
  for (const name of SAMPLING) {
    if (settings[name] !== null && settings[name] !== undefined) body[name] = settings[name];
  }
  if (settings.max_tokens != null) body.max_output_tokens = settings.max_tokens;
  const functions = settings.tools ? JSON.parse(settings.tools) : [];
  body.tools = [
    // Chat's {type, function: {name, parameters}} is flat here: {type, name, parameters}.
    ...functions.map((tool) => (tool.function ? { type: 'function', ...tool.function } : tool)),
    ...servers.map((name) => ({ type: 'mcp', server_label: name, require_approval: 'never' })),
  ];
  const choice = settings.tool_choice;
  if (choice) body.tool_choice = CHOICES.includes(choice) ? choice : { type: 'function', name: choice };
  if (settings.response_format) {
    const schema = JSON.parse(settings.response_format);
    body.text = { format: { type: 'json_schema', name: 'answer', schema } };
  }
  return body;
}

async function readStream(response, result, onUpdate) {
  let textItem = null; // the message item whose text is coming: a later one starts a paragraph
  for await (const event of events(response)) {
    if (!event.data) continue;
    const data = JSON.parse(event.data);
    switch (data.type) {
      case 'response.created':
        result.id = data.response.id;
        result.model = data.response.model;
        break;
      case 'response.output_text.delta':
        result.firstTokenAt ??= performance.now();
        if (textItem !== data.item_id && result.content) result.content += '\n\n';
        textItem = data.item_id;
        result.content += data.delta;
        break;
      case 'response.reasoning_text.delta':
        result.firstTokenAt ??= performance.now();
        result.reasoning += data.delta;
        break;
      case 'response.output_item.added':
      case 'response.output_item.done':
        if (data.item.type === 'mcp_call') {
          result.firstTokenAt ??= performance.now();
          putCall(result.mcpCalls, data.item);
        } else if (data.item.type === 'function_call' && data.type.endsWith('.done')) {
          const { call_id: id, name, arguments: args } = data.item;
          result.toolCalls.push({ id, type: 'function', function: { name, arguments: args } });
        }
        break;
      case 'response.completed':
      case 'response.incomplete':
        finish(result, data.response);
        break;
      case 'response.failed':
        throw new ApiError(500, data.response.error?.message || 'The response failed.');
      case 'error':
        throw new ApiError(500, data.message, data.code);
      default:
        continue; // the other events repeat what the items say
    }
    onUpdate(result);
  }
}

// An mcp_call item as the page keeps it (protocol.McpCall): added in progress, then done.
function putCall(calls, item) {
  const error = item.error == null || typeof item.error === 'string'
    ? item.error ?? null
    : JSON.stringify(item.error);
  const call = {
    id: item.id, server_label: item.server_label, name: item.name,
    arguments: item.arguments || '', output: item.output ?? null, error, status: item.status,
  };
  const index = calls.findIndex((known) => known.id === item.id);
  if (index >= 0) calls[index] = call;
  else calls.push(call);
}

function finish(result, response) {
  const usage = response.usage;
  if (usage) {
    result.usage = {
      prompt_tokens: usage.input_tokens,
      completion_tokens: usage.output_tokens,
      total_tokens: usage.total_tokens,
      prompt_tokens_details: { cached_tokens: usage.input_tokens_details?.cached_tokens },
    };
  }
  if (response.status === 'incomplete') result.finishReason = 'length';
  else result.finishReason = result.toolCalls.length ? 'tool_calls' : 'stop';
}
