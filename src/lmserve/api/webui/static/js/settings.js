// A conversation's settings: the seed's request parameters (model, temperature, top_p, top_k,
// max_tokens, stream, stop, presence_penalty, frequency_penalty, logit_bias, repeat_penalty,
// seed; `messages` is the conversation itself), the system prompt, tools, tool_choice and a
// JSON schema, and the MCP servers switched on (mcp.js). The form shows them; the server
// keeps them with the conversation (the same shape as ChatSettings in
// api/webui/protocol.py). Empty means "the server's default", and is left out of the
// request, so the server's own defaults (LM Studio's, or serve's flags) apply.

import { $ } from './dom.js';
import { chosenMcpServers, showMcpServers } from './mcp.js';

const NUMBERS = {
  temperature: parseFloat,
  top_p: parseFloat,
  top_k: (text) => parseInt(text, 10),
  max_tokens: (text) => parseInt(text, 10),
  presence_penalty: parseFloat,
  frequency_penalty: parseFloat,
  repeat_penalty: parseFloat,
  seed: (text) => parseInt(text, 10),
};
const TEXTS = ['system_prompt', 'tools', 'response_format'];
const DEFAULTS_STORAGE = 'lmserve.settings';
const CHOICES = ['auto', 'none', 'required']; // tool_choice, else the name of a tool

export function emptySettings() {
  const settings = {
    model: null, stream: true, stop: [], logit_bias: {}, tool_choice: null, mcp_servers: [],
  };
  for (const name of [...Object.keys(NUMBERS), ...TEXTS]) settings[name] = null;
  return settings;
}

/** The settings a new conversation starts from: the last ones used in this browser. */
export function defaultSettings() {
  try {
    return { ...emptySettings(), ...JSON.parse(localStorage.getItem(DEFAULTS_STORAGE) || '{}') };
  } catch {
    return emptySettings();
  }
}

export function rememberSettings(settings) {
  // MCP servers run tools on this machine: a new conversation starts with none switched on.
  const { mcp_servers: _, ...kept } = settings;
  try {
    localStorage.setItem(DEFAULTS_STORAGE, JSON.stringify(kept));
  } catch {
    /* private mode: nothing to remember with */
  }
}

// Stop strings are typed one per line; \n, \t and \\ spell what a line cannot hold.
const unescape = (line) =>
  line.replace(/\\(n|t|\\)/g, (_, c) => ({ n: '\n', t: '\t', '\\': '\\' })[c]);
const escape = (text) => text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/\t/g, '\\t');

/** Show `settings` in the form. */
export function showSettings(settings) {
  for (const name of Object.keys(NUMBERS)) $(name).value = settings[name] ?? '';
  for (const name of TEXTS) $(name).value = settings[name] ?? '';
  $('stream').checked = settings.stream !== false;
  $('stop_lines').value = (settings.stop || []).map(escape).join('\n');
  const bias = settings.logit_bias || {};
  $('logit_bias').value = Object.keys(bias).length ? JSON.stringify(bias) : '';
  $('tool_choice').value = settings.tool_choice ?? '';
  showMcpServers(settings.mcp_servers);
  $('settings-error').textContent = '';
}

/** The form's settings (the model comes from the picker), or throws with what is wrong. */
export function readSettings(model) {
  const settings = emptySettings();
  settings.model = model || null;
  for (const [name, parse] of Object.entries(NUMBERS)) {
    const text = $(name).value.trim();
    if (!text) continue;
    const value = parse(text);
    if (!Number.isFinite(value)) throw new Error(`${name} must be a number`);
    settings[name] = value;
  }
  for (const name of TEXTS) settings[name] = $(name).value.trim() ? $(name).value : null;
  settings.stream = $('stream').checked;
  settings.stop = $('stop_lines').value.split('\n').filter((line) => line !== '').map(unescape);
  const bias = $('logit_bias').value.trim();
  if (bias) {
    let parsed;
    try {
      parsed = JSON.parse(bias);
    } catch {
      throw new Error('logit_bias must be a JSON object, e.g. {"2": -100}');
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new Error('logit_bias must be a JSON object, e.g. {"2": -100}');
    }
    settings.logit_bias = parsed;
  }
  settings.tool_choice = $('tool_choice').value.trim() || null;
  if (settings.tool_choice && !/^[A-Za-z0-9_.:-]+$/.test(settings.tool_choice)) {
    throw new Error("tool_choice is auto, none, required or a tool's name");
  }
  settings.mcp_servers = chosenMcpServers();
  requestExtras(settings); // throws if the tools or the schema are not JSON
  return settings;
}

function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(`${what} is not JSON: ${error.message}`);
  }
}

function requestExtras(settings) {
  const extras = {};
  if (settings.tools) extras.tools = parseJson(settings.tools, 'tools');
  const choice = settings.tool_choice;
  if (choice) {
    extras.tool_choice = CHOICES.includes(choice) ? choice : { type: 'function', function: { name: choice } };
  }
  if (settings.response_format) {
    const schema = parseJson(settings.response_format, 'The structured output schema');
    extras.response_format = { type: 'json_schema', json_schema: { name: 'answer', schema } };
  }
  return extras;
}

/** The body of a chat completion request for `messages` under `settings`. */
export function requestBody(settings, messages) {
  const system = settings.system_prompt ? [{ role: 'system', content: settings.system_prompt }] : [];
  const body = { model: settings.model, messages: [...system, ...messages] };
  for (const name of Object.keys(NUMBERS)) {
    if (settings[name] !== null && settings[name] !== undefined) body[name] = settings[name];
  }
  body.stream = settings.stream !== false;
  if (body.stream) body.stream_options = { include_usage: true };
  if (settings.stop?.length) body.stop = settings.stop;
  if (settings.logit_bias && Object.keys(settings.logit_bias).length) {
    body.logit_bias = settings.logit_bias;
  }
  return { ...body, ...requestExtras(settings) };
}
