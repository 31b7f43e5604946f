// Building elements from data, never from HTML strings: text goes in through textContent, so
// nothing a model or a user wrote is ever parsed as markup here. (The one place the page
// parses HTML is rendered markdown, in markdown.js, and only what DOMPurify returns; the
// page's Trusted Types policy makes the browser refuse any other string.)

/**
 * h('button', {class: 'icon', text: 'Stop', onclick: stop}, child...) -> HTMLElement.
 * `text` sets textContent; `on*` functions become listeners; `dataset` fills data-*;
 * true/false set or remove a boolean attribute; anything else is an attribute. There is no
 * way to pass a style (the CSP forbids inline styles) or raw HTML.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'text') element.textContent = String(value);
    else if (name === 'class') element.className = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on') && typeof value === 'function') {
      element.addEventListener(name.slice(2), value);
    } else if (name === 'style' || name === 'innerHTML') {
      throw new Error(`h(): '${name}' is not allowed`);
    } else element.setAttribute(name, value === true ? '' : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

export const $ = (id) => document.getElementById(id);

/** Replace an element's children (never innerHTML = '': Trusted Types refuse strings). */
export function fill(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A number for display: 12.3, or '–' when unknown. */
export function num(value, digits = 1) {
  return typeof value === 'number' && Number.isFinite(value) ? value.toFixed(digits) : '–';
}
