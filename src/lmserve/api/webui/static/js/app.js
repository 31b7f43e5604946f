// The page's entry point: its state (the open conversation, the answer in progress) and the
// wiring of every control and key. The other modules each do one thing: api.js (calls, the
// key), conversation.js (the tree, on the server), chat.js (one answer), logs.js (what the
// model received), models.js, settings.js, view.js (drawing), markdown.js (safe rendering),
// layout.js (panels, drawer, theme), attachments.js (images in the composer), images.js
// (a message's images: fetched, shown, sent), mcp.js (mcp.json's servers, on per
// conversation) and responses.js (an answer with them, through /v1/responses).

import { Attachments } from './attachments.js';
import { answerMeta, generate } from './chat.js';
import {
  Conversation,
  deleteConversation,
  downloadExport,
  importFile,
  listConversations,
} from './conversation.js';
import { $, fill, h } from './dom.js';
import { remember, requestMessage } from './images.js';
import { closeDrawers, showPanel, wireLayout } from './layout.js';
import { attachLogPanel, LogStream } from './logs.js';
import { loadMcpServers, usableMcpServers } from './mcp.js';
import { Models } from './models.js';
import { inputItems, respond, responsesBody } from './responses.js';
import {
  defaultSettings,
  emptySettings,
  readSettings,
  rememberSettings,
  requestBody,
  showSettings,
} from './settings.js';
import { pendingAnswer, renderConversation } from './view.js';

// `loaded`: the page has its data (the model list, the conversation a reload reopens);
// `queued`: a message waits for that.
const state = { conversation: null, generating: null, list: [], loaded: false, queued: false };
let markLoaded;
const loaded = new Promise((resolve) => {
  markLoaded = resolve;
});
const logs = new LogStream();
const models = new Models({ onStatus: status, onChange: settingsChanged });
const attachments = new Attachments({ onStatus: status, note: visionNote });

// Said under attached images when the model picked is known not to see them (the server
// would refuse the message: it is still sent, and the refusal shown).
function visionNote() {
  const model = $('model-select').value;
  if (!model || models.sees(model) !== false) return null;
  return `${model} does not see images: it has no vision projector (mmproj).`;
}

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

// -- drawing ----------------------------------------------------------------------------------

const actions = {
  onEdit: (message, text) => run(() => edit(message, text)),
  onRegenerate: (message) => run(() => regenerate(message)),
  onSwitch: (id) => run(async () => {
    await state.conversation.switchTo(id);
    render();
  }),
};

function render() {
  const conversation = state.conversation;
  renderConversation($('messages'), conversation, actions, Boolean(state.generating));
  $('chat-title').textContent = conversation.title;
  document.title = `${conversation.title} · lmserve`;
  renderList();
}

function renderList() {
  const current = state.conversation?.id;
  fill(
    $('conversation-list'),
    state.list.map((item) =>
      h(
        'li',
        { class: item.id === current ? 'current' : '', dataset: { id: item.id } },
        h('button', {
          type: 'button', class: 'open', text: item.title, title: item.title,
          'aria-current': item.id === current ? 'true' : null,
          onclick: () => run(() => openConversation(item.id)),
        }),
        h('button', {
          type: 'button', class: 'link export', text: '⤓', 'aria-label': `Export ${item.title}`,
          title: 'Export', onclick: () => run(() => downloadExport(item.id)),
        }),
        h('button', {
          type: 'button', class: 'link delete', text: '✕', 'aria-label': `Delete ${item.title}`,
          title: 'Delete', onclick: () => run(() => remove(item)),
        }),
      ),
    ),
  );
}

// A message sent before the page has its data waits for it, the Send button busy meanwhile.
function setQueued(queued) {
  state.queued = queued;
  const button = $('send');
  button.disabled = queued;
  button.setAttribute('aria-busy', String(queued));
  button.textContent = queued ? 'Sending…' : 'Send';
  if (queued) status('Waiting for the list of models…');
}

function setBusy(busy) {
  $('send').hidden = busy;
  $('stop').hidden = !busy;
  $('new-chat').disabled = busy;
  document.documentElement.dataset.busy = String(busy);
}

// How many answers this page has finished (stored, stopped or failed): lets a script or a
// test wait for the next one without guessing from the DOM.
function answerDone() {
  const html = document.documentElement;
  html.dataset.answers = String(Number(html.dataset.answers || 0) + 1);
}

/** Run an action; its failure goes to the status line instead of vanishing. */
async function run(action) {
  try {
    await action();
  } catch (error) {
    status(error.message, true);
  }
}

// -- conversations ----------------------------------------------------------------------------

async function refreshList() {
  state.list = await listConversations();
  renderList();
}

function startConversation() {
  state.conversation = new Conversation({ settings: defaultSettings() });
  showSettings(state.conversation.settings);
  models.render(state.conversation.settings.model);
  history.replaceState(null, '', location.pathname);
  render();
  $('input').focus();
}

async function openConversation(id) {
  if (state.generating) return;
  state.conversation = await Conversation.open(id);
  showSettings(state.conversation.settings);
  models.render(state.conversation.settings.model);
  history.replaceState(null, '', `#${id}`); // a reload opens it again
  status('');
  render();
  $('app').classList.remove('sidebar-open');
}

async function remove(item) {
  if (!confirm(`Delete “${item.title}”?`)) return;
  await deleteConversation(item.id);
  if (state.conversation?.id === item.id) startConversation();
  await refreshList();
}

// -- asking -----------------------------------------------------------------------------------

async function send() {
  const text = $('input').value;
  const images = [...attachments.items]; // not those attached while this one is stored
  if ((!text.trim() && !images.length) || state.generating || state.queued) return;
  if (!state.loaded) {
    // Which model to ask is not known yet: the message waits (a request needs a model).
    setQueued(true);
    await loaded;
    setQueued(false);
    status('');
    if (state.generating) return;
  }
  const conversation = state.conversation;
  conversation.settings = currentSettings();
  await conversation.save(text.trim().split('\n')[0].slice(0, 60) || 'Image');
  history.replaceState(null, '', `#${conversation.id}`);
  const question = await conversation.add({
    parent_id: conversation.currentLeaf,
    role: 'user',
    content: text,
    images: images.map(({ url }) => ({ url })),
  });
  remember(question.images, images.map(({ url }) => url));
  if ($('input').value === text) $('input').value = ''; // not what was typed since
  attachments.remove(images);
  await answer(question.id);
}

async function edit(message, text) {
  const conversation = state.conversation;
  if (message.role === 'user') {
    // An edited question is a new branch at the same point, answered afresh, with the
    // same images (the store has them: their ids are enough).
    const question = await conversation.add({
      parent_id: message.parent_id,
      role: 'user',
      content: text,
      images: (message.images || []).map(({ id }) => ({ id })),
    });
    await answer(question.id);
    return;
  }
  await conversation.add({
    parent_id: message.parent_id,
    role: message.role,
    content: text,
    mcp_calls: message.mcp_calls ?? null, // the calls were made: the edit is of the text
    meta: { ...message.meta, edited: true },
  });
  render();
}

async function regenerate(message) {
  state.conversation.currentLeaf = message.parent_id;
  await answer(message.parent_id);
}

/** Generate an answer to the branch ending at `parentId`, and store it under it. */
async function answer(parentId) {
  const conversation = state.conversation;
  conversation.currentLeaf = parentId;
  const controller = new AbortController();
  state.generating = controller;
  setBusy(true);
  let model = conversation.settings.model;
  let failure = null;
  try {
    render();
    await refreshList();
    status('');
    // Never a request without a model: the conversation's, else the picker's once the list
    // is known; with none, the page says so where the answer would be.
    model = await models.pick(model);
    if (!model) throw new Error(models.missing());
    const ask = await asking(conversation, { ...conversation.settings, model });
    const pending = pendingAnswer($('messages'), model);
    // The rendered prompt comes from the log stream: be subscribed before asking.
    await Promise.race([logs.ready, new Promise((resolve) => setTimeout(resolve, 3000))]);
    const result = await ask(controller.signal, pending.update);
    const empty = !result.content && !result.reasoning && !result.toolCalls.length;
    if (result.stopped && empty && !result.mcpCalls.length) {
      status('Stopped before the first token.');
    } else {
      const input = await logs.input(result.id);
      await conversation.add({
        parent_id: parentId,
        role: 'assistant',
        content: result.content,
        reasoning_content: result.reasoning || null,
        tool_calls: result.toolCalls.length ? result.toolCalls : null,
        mcp_calls: result.mcpCalls.length ? result.mcpCalls : null,
        meta: answerMeta(result, input),
      });
      status(result.stopped ? 'Stopped: the answer so far is kept.' : '');
    }
  } catch (error) {
    failure = error;
  }
  // Whatever happened, the page is free again.
  state.generating = null;
  setBusy(false);
  render();
  answerDone();
  if (failure) {
    pendingAnswer($('messages'), model).fail(failure.message); // shown, not stored
    status(failure.message, true);
    return;
  }
  await refreshList();
  models.refresh(conversation.settings.model); // a just-in-time load shows as loaded now
}

// How to ask for the answer to the branch shown: through chat completions, or, with MCP
// servers switched on (and listed by the server), through /v1/responses.
async function asking(conversation, settings) {
  const path = conversation.path();
  const servers = usableMcpServers(settings);
  if (servers.length) {
    const body = responsesBody(settings, await inputItems(conversation.id, path), servers);
    return (signal, onUpdate) => respond(body, signal, onUpdate);
  }
  const messages = await Promise.all(path.map((message) => requestMessage(conversation.id, message)));
  const body = requestBody(settings, messages);
  return (signal, onUpdate) => generate(body, signal, onUpdate);
}

function stop() {
  state.generating?.abort();
}

// -- settings ---------------------------------------------------------------------------------

function currentSettings() {
  try {
    return readSettings($('model-select').value || models.fallback());
  } catch (error) {
    showPanel('settings');
    $('settings-error').textContent = error.message;
    throw error;
  }
}

let saveTimer = null;

function settingsChanged() {
  attachments.render(); // another model may see images, or not
  clearTimeout(saveTimer);
  saveTimer = setTimeout(() => {
    let settings;
    try {
      settings = readSettings($('model-select').value || models.fallback());
    } catch (error) {
      $('settings-error').textContent = error.message;
      return;
    }
    $('settings-error').textContent = '';
    rememberSettings(settings);
    run(() => state.conversation.saveSettings(settings));
  }, 300);
}

// -- renaming, keys ---------------------------------------------------------------------------

function startRenaming() {
  const conversation = state.conversation;
  const title = $('chat-title');
  const input = h('input', { class: 'chat-title', 'aria-label': 'Title', maxlength: 200 });
  input.value = conversation.title;
  let finished = false; // replacing the input blurs it: that must not finish it twice
  const done = (save) => {
    if (finished) return;
    finished = true;
    input.replaceWith(title);
    if (save && input.value.trim() && input.value !== conversation.title) {
      run(async () => {
        await conversation.rename(input.value.trim());
        render();
        await refreshList();
      });
    }
  };
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter') done(true);
    if (event.key === 'Escape') done(false);
  });
  input.addEventListener('blur', () => done(true), { once: true });
  title.replaceWith(input);
  input.focus();
  input.select();
}

function wire() {
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault(); // no form submission (the CSP allows none)
    run(send);
  });
  $('input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      run(send);
    }
  });
  $('stop').addEventListener('click', stop);
  $('new-chat').addEventListener('click', startConversation);
  $('chat-title').addEventListener('click', startRenaming);
  $('settings-form').addEventListener('input', settingsChanged);
  $('settings-form').addEventListener('submit', (event) => event.preventDefault());
  $('reset-settings').addEventListener('click', () => {
    showSettings(emptySettings());
    settingsChanged();
  });
  $('export-all').addEventListener('click', () => run(() => downloadExport(null)));
  $('import').addEventListener('click', () => $('import-file').click());
  $('import-file').addEventListener('change', () => run(importChosenFile));
  document.addEventListener('keydown', onKey);
  // Another tab may have added to the open conversation: look again when this one is shown.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible' || !state.conversation?.id) return;
    if (document.querySelector('.edit-box')) return; // not under someone's editing
    run(async () => {
      const fresh = await Conversation.open(state.conversation.id);
      if (state.generating || fresh.id !== state.conversation.id) return;
      state.conversation = fresh;
      render();
      await refreshList();
    });
  });
}

async function importChosenFile() {
  const file = $('import-file').files[0];
  $('import-file').value = '';
  if (!file) return;
  const created = await importFile(await file.text());
  await refreshList();
  if (created.length) await openConversation(created[0].id);
  status(`Imported ${created.length} conversation${created.length === 1 ? '' : 's'}.`);
}

function onKey(event) {
  const typing = event.target.closest?.('input, textarea, select, [contenteditable]');
  if (event.key === 'Escape') {
    if (state.generating) stop();
    else if (!$('key-dialog').open) closeDrawers();
  } else if (event.altKey && !event.ctrlKey && !event.metaKey) {
    const key = event.key.toLowerCase();
    const command = { n: startConversation, s: () => showPanel('settings'), l: () => showPanel('logs') }[key];
    if (command && !state.generating) {
      event.preventDefault();
      command();
    }
  } else if (event.key === '/' && !typing) {
    event.preventDefault();
    $('input').focus();
  }
}

async function init() {
  wireLayout();
  wire();
  attachments.wire();
  attachLogPanel(logs);
  logs.run();
  const id = decodeURIComponent(location.hash.slice(1)); // the conversation open before a reload
  startConversation();
  await run(() => models.refresh(state.conversation.settings.model));
  await run(loadMcpServers);
  await run(refreshList);
  if (id) await run(() => openConversation(id));
  state.loaded = true;
  markLoaded();
  document.documentElement.dataset.ready = 'true'; // for tests: the page has loaded its data
}

init();
