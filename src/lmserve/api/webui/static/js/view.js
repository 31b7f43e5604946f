// The messages of the branch shown, each with what the page knows of it: the answer as
// markdown, its reasoning (collapsed), the MCP calls the server ran for it (collapsed: server,
// tool, arguments, output or error), its tool calls, its figures, and the exact prompt the
// model received. User text is shown as typed (plain text, never parsed), below the images
// the user attached.

import { fill, h, num } from './dom.js';
import { thumbnails } from './images.js';
import { copyText, renderMarkdown } from './markdown.js';

const ROLES = { user: 'You', system: 'System', tool: 'Tool' };

/**
 * Show `conversation`'s current branch in `container`. `actions` has onEdit(message, text),
 * onRegenerate(message) and onSwitch(messageId); `busy` hides what would start a request.
 */
export function renderConversation(container, conversation, actions, busy) {
  const path = conversation.path();
  if (!path.length) {
    fill(container, h('p', { class: 'empty', text: 'Send a message to start.' }));
    return;
  }
  fill(container, path.map((message) => messageElement(message, conversation, actions, busy)));
}

function messageElement(message, conversation, actions, busy) {
  const meta = message.meta || {};
  const who = message.role === 'assistant' ? meta.model || 'Assistant' : ROLES[message.role];
  const content = h('div', { class: message.role === 'assistant' ? 'content md' : 'content plain' });
  showContent(content, message.role, message.content);
  const copy = h('button', {
    type: 'button',
    class: 'link',
    text: 'Copy',
    onclick: () => copyText(message.content, copy),
  });
  const buttons = [copy];
  if (!busy) {
    buttons.push(
      h('button', {
        type: 'button',
        class: 'link edit',
        text: 'Edit',
        onclick: () => startEditing(content, message, actions),
      }),
    );
    if (message.role === 'assistant') {
      buttons.push(
        h('button', {
          type: 'button',
          class: 'link regenerate',
          text: 'Regenerate',
          onclick: () => actions.onRegenerate(message),
        }),
      );
    }
  }
  return h(
    'article',
    { class: `message ${message.role}`, dataset: { id: message.id }, 'aria-label': `${who} said` },
    h('header', { class: 'message-head' }, h('span', { class: 'role', text: who }),
      branchSwitcher(message, conversation, actions, busy)),
    message.reasoning_content ? reasoningBlock(message.reasoning_content) : null,
    message.role === 'user' ? thumbnails(conversation.id, message.images) : null,
    mcpCallsBlock(message.mcp_calls),
    content,
    toolCallsBlock(message.tool_calls),
    message.role === 'assistant' ? h('div', { class: 'stats', text: statsText(meta) }) : null,
    message.role === 'assistant' ? promptBlock(meta) : null,
    h('div', { class: 'message-actions' }, buttons),
  );
}

function showContent(element, role, text) {
  if (role === 'assistant') renderMarkdown(element, text);
  else element.textContent = text;
}

// "‹ 2/3 ›" on a message that has siblings: the other edits or answers at this point.
function branchSwitcher(message, conversation, actions, busy) {
  const siblings = conversation.siblings(message);
  if (siblings.length < 2) return null;
  const index = siblings.findIndex((sibling) => sibling.id === message.id);
  const go = (step) => actions.onSwitch(siblings[index + step].id);
  return h(
    'span',
    { class: 'branches' },
    h('button', {
      type: 'button', class: 'link branch-prev', text: '‹', 'aria-label': 'Previous version',
      disabled: busy || index === 0, onclick: () => go(-1),
    }),
    h('span', { class: 'branch-count', text: `${index + 1}/${siblings.length}` }),
    h('button', {
      type: 'button', class: 'link branch-next', text: '›', 'aria-label': 'Next version',
      disabled: busy || index === siblings.length - 1, onclick: () => go(1),
    }),
  );
}

function startEditing(content, message, actions) {
  const box = h('textarea', { rows: Math.min(12, message.content.split('\n').length + 1) });
  box.value = message.content;
  const editor = h(
    'div',
    { class: 'edit-box' },
    box,
    h(
      'div',
      { class: 'message-actions' },
      h('button', {
        type: 'button', class: 'primary save-edit',
        text: message.role === 'user' ? 'Save and send' : 'Save',
        onclick: () => actions.onEdit(message, box.value),
      }),
      h('button', { type: 'button', text: 'Cancel', onclick: () => editor.replaceWith(content) }),
    ),
  );
  box.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') editor.replaceWith(content);
  });
  content.replaceWith(editor);
  box.focus();
}

function reasoningBlock(text) {
  const body = h('div', { class: 'md' });
  renderMarkdown(body, text);
  return h('details', { class: 'reasoning' }, h('summary', { text: 'Reasoning' }), body);
}

// Arguments as JSON, indented; as they came when they are not JSON.
function prettyJson(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

function toolCallsBlock(calls) {
  if (!calls?.length) return null;
  return calls.map((call) =>
    h(
      'div',
      { class: 'tool-call' },
      h('span', { text: 'Tool call: ' }),
      h('span', { class: 'name', text: call.function?.name || '?' }),
      h('pre', { text: prettyJson(call.function?.arguments ?? '') }),
    ),
  );
}

// A call the server ran (an MCP tool): collapsed to its server, tool and outcome.
function mcpCallsBlock(calls) {
  if (!calls?.length) return null;
  return calls.map((call) => {
    const failed = call.error != null;
    const done = call.output != null || failed;
    return h(
      'details',
      { class: `tool-call mcp-call${failed ? ' failed' : ''}`, dataset: { server: call.server_label } },
      h(
        'summary',
        {},
        h('span', { text: 'MCP call: ' }),
        h('span', { class: 'name', text: `${call.server_label} · ${call.name}` }),
        h('span', { class: 'outcome', text: failed ? ' failed' : done ? '' : ' running…' }),
      ),
      h('div', { class: 'label', text: 'Arguments' }),
      h('pre', { class: 'arguments', text: prettyJson(call.arguments || '{}') }),
      done ? h('div', { class: 'label', text: failed ? 'Error' : 'Output' }) : null,
      done ? h('pre', { class: failed ? 'call-error' : 'output', text: failed ? call.error : call.output }) : null,
    );
  });
}

export function statsText(meta) {
  const stats = meta.stats || {};
  const usage = meta.usage || {};
  const parts = [];
  if (stats.tokens_per_second != null) parts.push(`${num(stats.tokens_per_second)} tok/s`);
  const first = stats.time_to_first_token ?? meta.client?.time_to_first_token;
  if (first != null) parts.push(`first token ${num(first, 2)} s`);
  const tokens = stats.completion_tokens ?? usage.completion_tokens;
  if (tokens != null) parts.push(`${tokens} tokens`);
  const prompt = stats.prompt_tokens ?? usage.prompt_tokens ?? meta.prompt_tokens;
  const cached = stats.cached_tokens ?? usage.prompt_tokens_details?.cached_tokens;
  if (prompt != null) parts.push(`prompt ${prompt} tokens${cached != null ? `, ${cached} cached` : ''}`);
  if (meta.stopped) parts.push('stopped');
  else if (stats.stop_reason || meta.finish_reason) parts.push(stats.stop_reason || meta.finish_reason);
  if (meta.edited) parts.push('edited');
  return parts.join(' · ');
}

// What the model received: the chat template's output, as the server's log recorded it (an
// image in it shows as <image 3f2a… 16 tokens>: its hash and the tokens it took).
function promptBlock(meta) {
  if (!meta.prompt) {
    if (!meta.request_id) return null;
    return h('p', { class: 'hint', text: 'The rendered prompt was not captured (log stream offline).' });
  }
  return h(
    'details',
    { class: 'prompt' },
    h('summary', {
      text: `What the model received: ${meta.prompt_tokens} tokens${imagesText(meta.images)}`,
    }),
    h('pre', { class: 'prompt-text', text: meta.prompt }),
    meta.parameters ? h('pre', { class: 'params', text: JSON.stringify(meta.parameters, null, 2) }) : null,
  );
}

function imagesText(images) {
  if (!images?.length) return '';
  const tokens = images.reduce((sum, image) => sum + image.tokens, 0);
  return `, ${images.length} image${images.length === 1 ? '' : 's'} (${tokens} tokens)`;
}

/** The answer being generated: an element that follows the result as it grows. */
export function pendingAnswer(container, model) {
  const content = h('div', { class: 'content md' });
  const reasoning = h('div', { class: 'md' });
  const reasoningBox = h('details', { class: 'reasoning', open: true, hidden: true },
    h('summary', { text: 'Reasoning' }), reasoning);
  const calls = h('div');
  const tools = h('div');
  const stats = h('div', { class: 'stats', text: 'waiting for the first token…' });
  const element = h(
    'article',
    { class: 'message assistant pending', 'aria-busy': 'true' },
    h('header', { class: 'message-head' }, h('span', { class: 'role', text: model || 'Assistant' })),
    reasoningBox, calls, content, tools, stats,
  );
  container.append(element);
  let scheduled = null;
  let latest = null;
  let shownCalls = ''; // the calls' states last drawn: a block is redrawn (closed) only on change
  // Markdown is rendered once per frame at most, however fast tokens come.
  const draw = () => {
    scheduled = null;
    renderMarkdown(content, latest.content);
    if (latest.reasoning) {
      reasoningBox.hidden = false;
      renderMarkdown(reasoning, latest.reasoning);
    }
    fill(tools, toolCallsBlock(latest.toolCalls));
    const callStates = latest.mcpCalls.map((call) => `${call.id}:${call.status}`).join();
    if (callStates !== shownCalls) fill(calls, mcpCallsBlock(latest.mcpCalls));
    shownCalls = callStates;
    const seconds = (performance.now() - latest.startedAt) / 1000;
    stats.textContent = latest.firstTokenAt ? `generating… ${num(seconds)} s` : stats.textContent;
    const nearBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 80;
    if (nearBottom) container.scrollTop = container.scrollHeight;
  };
  return {
    element,
    update(result) {
      latest = result;
      scheduled ??= requestAnimationFrame(draw);
    },
    fail(message) {
      element.classList.add('error-message');
      element.removeAttribute('aria-busy');
      stats.textContent = message;
    },
  };
}
