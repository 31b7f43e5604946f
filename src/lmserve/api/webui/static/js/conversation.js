// Conversations live on the server (/lmserve/conversations, SQLite), not in the browser:
// they survive a reload, another tab, another browser. A conversation is a tree: editing a
// message or regenerating an answer adds a sibling instead of changing what was said, and
// `current_leaf` says which branch is shown. Messages are written once each, as they are
// finished, so two tabs writing to one conversation add branches rather than overwrite.

import { json, request } from './api.js';

const BASE = '/lmserve/conversations';

export class Conversation {
  constructor(data) {
    this.id = data.id ?? null; // null until the first message is sent
    this.title = data.title ?? 'New chat';
    this.settings = data.settings;
    this.currentLeaf = data.current_leaf ?? null;
    this.messages = data.messages ?? [];
  }

  static async open(id) {
    return new Conversation(await json(`${BASE}/${encodeURIComponent(id)}`));
  }

  byId(id) {
    return this.messages.find((message) => message.id === id);
  }

  /** Children of `parentId` (null: the first messages), in the order they were written. */
  children(parentId) {
    return this.messages.filter((message) => message.parent_id === parentId);
  }

  siblings(message) {
    return this.children(message.parent_id);
  }

  /** The messages shown: from the first to the current leaf. */
  path() {
    const path = [];
    for (let message = this.byId(this.currentLeaf); message; message = this.byId(message.parent_id)) {
      path.unshift(message);
    }
    return path;
  }

  /** The newest leaf below `id`: where a switched-to branch continues. */
  leafUnder(id) {
    let leaf = id;
    for (let next = this.children(leaf); next.length; next = this.children(leaf)) {
      leaf = next[next.length - 1].id;
    }
    return leaf;
  }

  /** Create it on the server, if it is not there yet. */
  async save(title) {
    if (this.id) return;
    const created = await json(BASE, {
      method: 'POST',
      body: { title: title || this.title, settings: this.settings },
    });
    this.id = created.id;
    this.title = created.title;
  }

  /** Add a finished message under `message.parent_id`; it becomes the current leaf. */
  async add(message) {
    const stored = await json(`${BASE}/${this.id}/messages`, { method: 'POST', body: message });
    this.messages.push(stored);
    this.currentLeaf = stored.id;
    return stored;
  }

  async switchTo(messageId) {
    this.currentLeaf = this.leafUnder(messageId);
    if (this.id) await this.patch({ current_leaf: this.currentLeaf });
  }

  async rename(title) {
    this.title = title;
    if (this.id) await this.patch({ title });
  }

  async saveSettings(settings) {
    this.settings = settings;
    if (this.id) await this.patch({ settings });
  }

  async patch(change) {
    await json(`${BASE}/${this.id}`, { method: 'PATCH', body: change });
  }
}

export async function listConversations() {
  return (await json(BASE)).data;
}

export async function deleteConversation(id) {
  await json(`${BASE}/${encodeURIComponent(id)}`, { method: 'DELETE' });
}

/** Download an export (one conversation, or all) as a JSON file. */
export async function downloadExport(id) {
  const path = id ? `${BASE}/${encodeURIComponent(id)}/export` : `${BASE}/export`;
  const response = await request(path);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = id ? `lmserve-${id}.json` : 'lmserve-conversations.json';
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Send an export file's text as it is: the server checks it (a 400 says what is wrong). */
export async function importFile(text) {
  return (await json(`${BASE}/import`, { method: 'POST', body: text })).data;
}
