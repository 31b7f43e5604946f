// Every call the page makes to the server goes through here, for two reasons:
// - The API key. The page itself loads without one, but every API call needs it when the
//   server has keys. On the first 401 we ask for it once (one dialog however many calls were
//   refused at the same moment), keep it in sessionStorage (this tab only, gone when the tab
//   closes) and send it as `Authorization: Bearer`. EventSource cannot send headers, so even
//   the log stream is read with fetch() and a stream reader (see `events` below).
// - Errors: the server answers errors as {"error": {"message"...}}; ApiError carries that
//   message so the page can show it as it is.

import { $ } from './dom.js';

const KEY_STORAGE = 'lmserve.apiKey';
let keyPrompt = null; // the dialog's answer while it is open, shared by every refused call

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return null; // storage may be off; the key then lives for this page only
  }
}

let memoryKey = null;

function rememberKey(key) {
  memoryKey = key;
  try {
    sessionStorage.setItem(KEY_STORAGE, key);
  } catch {
    /* kept in memory only */
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    message = body?.error?.message || message;
    code = body?.error?.code || null;
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, message, code);
}

/** Ask for the key in the dialog; resolves when one was entered. */
function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  keyPrompt = new Promise((resolve) => {
    const dialog = $('key-dialog');
    const form = $('key-form');
    const input = $('key-input');
    $('key-message').textContent = reason;
    input.value = '';
    const submit = (event) => {
      event.preventDefault(); // no form submission: the CSP allows none, and none is needed
      const key = input.value.trim();
      if (!key) return;
      form.removeEventListener('submit', submit);
      rememberKey(key);
      dialog.close();
      keyPrompt = null;
      resolve(key);
    };
    form.addEventListener('submit', submit);
    // Esc would close the dialog with no key and leave the calls hanging: keep it open.
    dialog.addEventListener('cancel', (event) => event.preventDefault(), { once: true });
    dialog.showModal();
    input.focus();
  });
  return keyPrompt;
}

/**
 * fetch() with the key; on a 401, ask for the key and try again. Returns the Response when it
 * is OK; otherwise throws ApiError with the server's message.
 */
export async function request(path, { method = 'GET', body, signal } = {}) {
  for (;;) {
    const headers = {};
    const key = storedKey() || memoryKey;
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      signal,
      cache: 'no-store',
    });
    if (response.status === 401) {
      const error = await errorOf(response);
      await askForKey(
        key ? `The key was refused: ${error.message}` : 'This server needs an API key.',
      );
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

/** A JSON call: the parsed answer. */
export async function json(path, options) {
  const response = await request(path, options);
  return response.json();
}

/**
 * The server-sent events of a response, as they arrive: {data} for each event's data, and
 * {comment} for comment lines (the log stream's ": subscribed", keep-alives).
 */
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replaceAll('\r\n', '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          else if (line.startsWith(':')) yield { comment: line.slice(1).trim() };
        }
        if (data.length) yield { data: data.join('\n') };
      }
    }
  } finally {
    // Also when the caller stops reading early: cancelling closes the connection, which is
    // how the server learns to stop generating and free the slot.
    reader.cancel().catch(() => {});
  }
}
