// Images a user attached to a message. The page sends each as a data: URL, to the model in
// an image_url part and to the conversation's store, which keeps it once by its SHA-256 (the
// hash the rendered prompt shows: <image 3f2a… 16 tokens>) and names it in the message as
// {id, media_type, size}. Opening a conversation brings no image: each is fetched when a
// message shows it or a request sends it, and kept here as a data: URL (the CSP allows no
// other image but the page's own files). Only these images are ever shown as images: what a
// model writes never is (markdown.js).

import { request } from './api.js';
import { h } from './dom.js';

export const IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/webp', 'image/gif', 'image/bmp'];
export const MAX_IMAGE_BYTES = 20 * 2 ** 20; // the server's default --max-image-size
export const MAX_IMAGES = 16; // per message, as the store keeps them

const urls = new Map(); // image id -> a promise of its data: URL

export function readDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** Remember the data of images just stored: what was sent is not fetched back. */
export function remember(refs, dataUrls) {
  refs.forEach((ref, index) => urls.set(ref.id, Promise.resolve(dataUrls[index])));
}

/** The data: URL of a stored image, fetched once. */
export function imageUrl(conversationId, ref) {
  if (!urls.has(ref.id)) {
    const path = `/lmserve/conversations/${encodeURIComponent(conversationId)}/images/${ref.id}`;
    const url = request(path).then((response) => response.blob()).then(readDataUrl);
    url.catch(() => urls.delete(ref.id)); // asked for again next time
    urls.set(ref.id, url);
  }
  return urls.get(ref.id);
}

/** A stored message as a chat request holds it: its images first, then its text. */
export async function requestMessage(conversationId, message) {
  const { role, content, tool_calls: calls, images } = message;
  if (calls?.length) return { role, content, tool_calls: calls };
  if (!images?.length) return { role, content };
  const parts = await Promise.all(
    images.map(async (ref) => ({
      type: 'image_url',
      image_url: { url: await imageUrl(conversationId, ref) },
    })),
  );
  if (content) parts.push({ type: 'text', text: content });
  return { role, content: parts };
}

/** A message's images, each shown once its data has come; a click enlarges one. */
export function thumbnails(conversationId, refs) {
  if (!refs?.length) return null;
  return h(
    'div',
    { class: 'attached' },
    refs.map((ref) => {
      const image = h('img', {
        class: 'thumb',
        alt: 'Attached image',
        title: `${ref.media_type}, ${Math.ceil(ref.size / 1024)} KiB, ${ref.id.slice(0, 4)}…`,
        onclick: () => image.classList.toggle('large'),
      });
      imageUrl(conversationId, ref).then(
        (url) => image.setAttribute('src', url),
        (error) => image.setAttribute('alt', `Image not available: ${error.message}`),
      );
      return image;
    }),
  );
}
