// The server's live log (GET /lmserve/log/stream): what every request sent the model and
// what came back. It is how the page learns the exact prompt an answer was generated from:
// the server renders the chat template, so only its `llm.prediction.input` record holds the
// text (and token count, and sampling settings) the model received. A chat completion's id
// is that record's `request_id`.
//
// The page subscribes once, before its first request, and keeps a short memory of records by
// request id; the panel shows the last ones as they come.

import { events, request } from './api.js';
import { $, fill, h, num } from './dom.js';

const KEEP_REQUESTS = 200;
const SHOW_RECORDS = 200;

export class LogStream {
  constructor() {
    this.byRequest = new Map(); // request_id -> {input, output}
    this.waiters = new Map(); // request_id -> [resolve]
    this.listeners = new Set();
    this.connected = false;
    this.ready = new Promise((resolve) => {
      this.markReady = resolve;
    });
  }

  /** Keep a subscription open for the page's life, reconnecting when it drops. */
  async run() {
    for (;;) {
      try {
        const response = await request('/lmserve/log/stream');
        for await (const event of events(response)) {
          if (!this.connected) this.setConnected(true);
          if (event.data) this.add(JSON.parse(event.data));
        }
      } catch (error) {
        this.notify({ type: 'lmserve.page', message: `log stream: ${error.message}` });
      }
      this.setConnected(false);
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  setConnected(connected) {
    this.connected = connected;
    if (connected) this.markReady();
    $('log-state').textContent = connected
      ? 'Connected: every request to this server shows here.'
      : 'Disconnected; trying again…';
  }

  add(record) {
    const id = record.request_id;
    if (id && (record.type === 'llm.prediction.input' || record.type === 'llm.prediction.output')) {
      const entry = this.byRequest.get(id) || {};
      // A request with n > 1 has one record per choice, all of one prompt; a response with
      // MCP calls has one per round, and the last is the prompt its answer came from.
      if (record.type === 'llm.prediction.input') entry.input = record;
      else entry.output ??= record;
      this.byRequest.set(id, entry);
      if (this.byRequest.size > KEEP_REQUESTS) {
        this.byRequest.delete(this.byRequest.keys().next().value);
      }
      if (record.type === 'llm.prediction.input') {
        for (const resolve of this.waiters.get(id) || []) resolve(record);
        this.waiters.delete(id);
      }
    }
    this.notify(record);
  }

  notify(record) {
    for (const listener of this.listeners) listener(record);
  }

  /** The input record of a request: at once if it came, else when it comes (or null). */
  input(requestId, timeoutMs = 3000) {
    const known = this.byRequest.get(requestId)?.input;
    if (known || !requestId) return Promise.resolve(known || null);
    return new Promise((resolve) => {
      const list = this.waiters.get(requestId) || [];
      list.push(resolve);
      this.waiters.set(requestId, list);
      setTimeout(() => resolve(null), timeoutMs);
    });
  }
}

/** The panel: one line per record, newest at the bottom. */
export function attachLogPanel(logs) {
  const list = $('log-list');
  $('clear-logs').addEventListener('click', () => fill(list));
  logs.listeners.add((record) => {
    list.append(recordItem(record));
    while (list.childElementCount > SHOW_RECORDS) list.firstElementChild.remove();
    if (!list.closest('[hidden]')) list.lastElementChild.scrollIntoView({ block: 'nearest' });
  });
}

function recordItem(record) {
  const time = record.timestamp ? new Date(record.timestamp * 1000).toLocaleTimeString() : '';
  const head = h(
    'div',
    {},
    h('span', { class: 'log-type', text: record.type }),
    ` ${time} ${record.model || ''} ${record.request_id || ''}`,
  );
  let body = null;
  if (record.type === 'llm.prediction.input') {
    body = [`${record.prompt_tokens} prompt tokens`, h('pre', { text: record.prompt })];
  } else if (record.type === 'llm.prediction.output') {
    const stats = record.stats || {};
    body = [
      `${stats.completion_tokens ?? '–'} tokens, ${num(stats.tokens_per_second)} tok/s, ` +
        `${stats.stop_reason || ''}`,
      h('pre', { text: record.output }),
    ];
  } else if (record.type === 'llm.prediction.progress') {
    body = `prompt read: ${record.processed_tokens} of ${record.prompt_tokens} tokens`;
  } else if (record.message) {
    body = record.message;
  }
  return h('li', {}, head, body);
}
