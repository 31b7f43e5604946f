// The model picker and the models panel, from LM Studio's native API: GET /api/v1/models
// lists the downloaded models with their loaded instances; load and unload are
// POST /api/v1/models/load and /unload. A downloaded model that is not loaded can still be
// picked: the server loads it just in time when a message names it. A model's
// `capabilities.vision` says whether it sees images.
//
// Until the first list has come, the page does not know what to ask: `ready` resolves when
// it has (or could not be had), and `pick` waits for it.

import { json } from './api.js';
import { $, fill, h } from './dom.js';

export class Models {
  constructor({ onStatus, onChange }) {
    this.list = [];
    this.known = false; // the first list has come (or failed to)
    this.error = null; // why the last list could not be had
    this.ready = new Promise((resolve) => {
      this.markKnown = resolve;
    });
    this.onStatus = onStatus;
    this.onChange = onChange; // the user picked another model
    $('model-select').addEventListener('change', () => this.onChange($('model-select').value));
    $('refresh-models').addEventListener('click', () => this.refresh());
  }

  async refresh(selected) {
    try {
      const answer = await json('/api/v1/models');
      this.list = answer.models.filter((model) => model.type === 'llm');
      this.error = null;
    } catch (error) {
      this.error = error.message;
      this.onStatus(`Could not list the models: ${error.message}`, true);
    }
    this.render(selected ?? $('model-select').value);
    this.known = true;
    this.markKnown();
  }

  /** The model a request goes to, once the list is known: `wanted` (a conversation's own),
   * else the picker's, else the first loaded or downloaded one; '' when there is none. */
  async pick(wanted) {
    await this.ready;
    if (wanted) return wanted;
    // None known: look again, in case one was downloaded or loaded since the list came.
    if (!this.fallback()) await this.refresh();
    return $('model-select').value || this.fallback();
  }

  /** What the page says where an answer would be, when there is no model to ask. */
  missing() {
    if (this.error) return `No model to ask: the model list could not be had (${this.error}).`;
    return (
      'No model is loaded or downloaded. Download one in a terminal with “lmserve get ' +
      'smollm2” (or any publisher/repo), then load it in the models panel (Settings) or ' +
      'send again: a downloaded model loads when a message names it.'
    );
  }

  /** The ids a request may name: loaded instances first, then downloaded models. */
  choices() {
    const loaded = [];
    const downloaded = [];
    for (const model of this.list) {
      for (const instance of model.loaded_instances) loaded.push({ id: instance.id, loaded: true });
      if (!model.loaded_instances.some((instance) => instance.id === model.key)) {
        downloaded.push({ id: model.key, loaded: false });
      }
    }
    return [...loaded, ...downloaded];
  }

  /** Whether the model `id` sees images (it has a vision projector): true, false, or null
   * when the list does not say. */
  sees(id) {
    const model = this.list.find(
      (item) => item.key === id || item.loaded_instances.some((instance) => instance.id === id),
    );
    const vision = model?.capabilities?.vision;
    return typeof vision === 'boolean' ? vision : null;
  }

  /** The model to use when a conversation names none: the first loaded one. */
  fallback() {
    return this.choices()[0]?.id || '';
  }

  render(selected) {
    const select = $('model-select');
    const choices = this.choices();
    const options = choices.map((choice) =>
      h('option', {
        value: choice.id,
        text: choice.loaded ? `● ${choice.id}` : `○ ${choice.id} (loads on use)`,
      }),
    );
    if (selected && !choices.some((choice) => choice.id === selected)) {
      options.push(h('option', { value: selected, text: `${selected} (not here)` }));
    }
    fill(select, options);
    select.value = selected || this.fallback();
    fill($('model-list'), this.list.map((model) => this.item(model)));
  }

  item(model) {
    const instances = model.loaded_instances;
    const state = instances.length
      ? instances
          .map(({ id, config }) => {
            const jit = config.jit ? ', just in time' : '';
            return `${id}: loaded, ${config.context_length} tokens, ${config.slots_busy}/${config.slots} slots busy${jit}`;
          })
          .join('; ')
      : 'downloaded, not loaded';
    const actions = instances.length
      ? instances.map(({ id }) =>
          h('button', { type: 'button', text: `Unload ${id}`, onclick: () => this.unload(id) }),
        )
      : [h('button', { type: 'button', text: 'Load', onclick: () => this.load(model.key) })];
    return h(
      'li',
      {},
      h('div', { class: 'model-name', text: model.key }),
      h('div', {
        class: 'model-state',
        text: `${model.params_string || ''} ${model.quantization?.name || ''} · ${state}`,
      }),
      h('div', { class: 'model-actions' }, actions),
    );
  }

  // Each action refreshes the list before it reports its outcome, so that when the status
  // says a model is loaded or unloaded, the panel already shows it.
  async load(key) {
    this.onStatus(`Loading ${key}…`);
    let outcome;
    try {
      const answer = await json('/api/v1/models/load', { method: 'POST', body: { model: key } });
      outcome = [`Loaded ${answer.model_instance_id} in ${answer.load_time_seconds} s.`, false];
    } catch (error) {
      outcome = [`Could not load ${key}: ${error.message}`, true];
    }
    await this.refresh();
    this.onStatus(...outcome);
  }

  async unload(id) {
    let outcome;
    try {
      await json('/api/v1/models/unload', { method: 'POST', body: { instance_id: id } });
      outcome = [`Unloaded ${id}.`, false];
    } catch (error) {
      outcome = [`Could not unload ${id}: ${error.message}`, true];
    }
    await this.refresh();
    this.onStatus(...outcome);
  }
}
