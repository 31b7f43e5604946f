// The images waiting in the composer: chosen with the Image button (a file input), pasted
// into the message box, or dropped on the composer. Each shows as a thumbnail that can be
// removed until the message is sent. A file a model cannot take (not PNG, JPEG, WebP, GIF or
// BMP, or over 20 MiB) is refused at once, with a word in the status line.

import { $, fill, h, num } from './dom.js';
import { IMAGE_TYPES, MAX_IMAGE_BYTES, MAX_IMAGES, readDataUrl } from './images.js';

export class Attachments {
  /** `note()` says why the model may not see images (null: nothing to say). */
  constructor({ onStatus, note }) {
    this.items = []; // {name, url}: url is the image's data: URL
    this.onStatus = onStatus;
    this.note = note;
  }

  wire() {
    const input = $('attach-file');
    $('attach').addEventListener('click', () => input.click());
    input.addEventListener('change', () => {
      const files = [...input.files];
      input.value = '';
      this.add(files);
    });
    $('input').addEventListener('paste', (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (!files.length) return;
      if (!event.clipboardData.types.includes('text/plain')) event.preventDefault();
      this.add(files);
    });
    const composer = $('composer');
    const withFiles = (event) => event.dataTransfer?.types.includes('Files');
    // A file dropped anywhere else must not replace the page with it.
    document.addEventListener('dragover', (event) => {
      if (!withFiles(event)) return;
      event.preventDefault();
      const inside = composer.contains(event.target);
      event.dataTransfer.dropEffect = inside ? 'copy' : 'none';
      composer.classList.toggle('dropping', inside);
    });
    document.addEventListener('dragleave', (event) => {
      if (!composer.contains(event.relatedTarget)) composer.classList.remove('dropping');
    });
    document.addEventListener('drop', (event) => {
      if (!withFiles(event)) return;
      event.preventDefault();
      composer.classList.remove('dropping');
      if (composer.contains(event.target)) this.add([...event.dataTransfer.files]);
    });
  }

  async add(files) {
    const refused = [];
    for (const file of files) {
      const name = file.name || 'pasted image';
      if (!IMAGE_TYPES.includes(file.type)) {
        refused.push(`${name} is not a PNG, JPEG, WebP, GIF or BMP image`);
      } else if (file.size > MAX_IMAGE_BYTES) {
        refused.push(`${name} is ${num(file.size / 2 ** 20)} MiB, over 20 MiB`);
      } else if (this.items.length >= MAX_IMAGES) {
        refused.push(`${name}: a message holds at most ${MAX_IMAGES} images`);
      } else {
        this.items.push({ name, url: await readDataUrl(file) });
      }
    }
    this.render();
    if (refused.length) this.onStatus(`Not attached: ${refused.join('; ')}.`, true);
  }

  /** Take away the items that were sent (not those attached since). */
  remove(sent) {
    this.items = this.items.filter((item) => !sent.includes(item));
    this.render();
  }

  render() {
    const box = $('attachments');
    const note = this.items.length ? this.note() : null;
    fill(
      box,
      this.items.map((item) =>
        h(
          'figure',
          { class: 'attachment' },
          h('img', { src: item.url, alt: item.name, title: item.name }),
          h('button', {
            type: 'button', class: 'icon remove', text: '✕', 'aria-label': `Remove ${item.name}`,
            onclick: () => this.remove([item]),
          }),
        ),
      ),
      note ? h('p', { class: 'hint', text: note }) : null,
    );
    box.hidden = !this.items.length;
  }
}
