// Model text as markdown, safely. Three layers, each enough on its own for the usual cases:
// 1. markdown-it with `html: false`: tags the model writes (<img onerror>, <script>) come out
//    as escaped text, and its link check drops javascript:, vbscript: and data: URLs.
// 2. DOMPurify on markdown-it's output, with a short list of tags and attributes and only
//    http(s)/mailto links: whatever slips past layer 1 (a bug, a plugin) is removed.
// 3. The browser: our CSP's Trusted Types accept only DOMPurify's output in innerHTML, and
//    forbid inline scripts and event handlers outright.
// Images are not rendered at all: a model's ![](https://...) would be a request to a server
// it names (the CSP blocks it too, but we rather not try).

import markdownit from '../vendor/markdown-it.min.mjs';
import DOMPurify from '../vendor/purify.es.mjs';
import hljs from '../vendor/highlight/core.min.js';
import bash from '../vendor/highlight/languages/bash.min.js';
import c from '../vendor/highlight/languages/c.min.js';
import cpp from '../vendor/highlight/languages/cpp.min.js';
import css from '../vendor/highlight/languages/css.min.js';
import diff from '../vendor/highlight/languages/diff.min.js';
import go from '../vendor/highlight/languages/go.min.js';
import java from '../vendor/highlight/languages/java.min.js';
import javascript from '../vendor/highlight/languages/javascript.min.js';
import json from '../vendor/highlight/languages/json.min.js';
import markdown from '../vendor/highlight/languages/markdown.min.js';
import plaintext from '../vendor/highlight/languages/plaintext.min.js';
import python from '../vendor/highlight/languages/python.min.js';
import rust from '../vendor/highlight/languages/rust.min.js';
import shell from '../vendor/highlight/languages/shell.min.js';
import sql from '../vendor/highlight/languages/sql.min.js';
import typescript from '../vendor/highlight/languages/typescript.min.js';
import xml from '../vendor/highlight/languages/xml.min.js';
import yaml from '../vendor/highlight/languages/yaml.min.js';
import { h } from './dom.js';

const LANGUAGES = {
  bash, c, cpp, css, diff, go, java, javascript, json, markdown, plaintext, python, rust, shell,
  sql, typescript, xml, yaml,
};
for (const [name, language] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, language);

function highlight(code, info) {
  const language = (info || '').trim().split(/\s+/)[0].toLowerCase();
  if (language && hljs.getLanguage(language)) {
    try {
      // highlight.js escapes the code and wraps tokens in <span class="hljs-...">.
      return hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } catch {
      /* fall through: markdown-it escapes it as plain code */
    }
  }
  return '';
}

const md = markdownit({ html: false, linkify: true, highlight });
md.disable('image');
// markdown-it aligns table cells with style="text-align:..."; the CSP forbids inline
// styles, so say it with a class instead.
md.core.ruler.push('align_with_classes', (state) => {
  for (const token of state.tokens) {
    const style = token.attrGet?.('style');
    if (!style) continue;
    const align = /text-align:\s*(left|center|right)/.exec(style);
    token.attrs = token.attrs.filter(([name]) => name !== 'style');
    if (align) token.attrJoin('class', `align-${align[1]}`);
  }
});

const PURIFY = {
  ALLOWED_TAGS: [
    'a', 'blockquote', 'br', 'code', 'del', 'em', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr',
    'li', 'ol', 'p', 'pre', 's', 'span', 'strong', 'sub', 'sup', 'table', 'tbody', 'td',
    'th', 'thead', 'tr', 'ul',
  ],
  ALLOWED_ATTR: ['href', 'title', 'class', 'start'],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_TRUSTED_TYPE: true, // a TrustedHTML, the only thing innerHTML accepts on this page
};
// Links open elsewhere and tell the other site nothing about this page.
DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A' && node.hasAttribute('href')) {
    node.setAttribute('target', '_blank');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
  }
});

/** Render `text` as markdown into `target` (its children replaced). */
export function renderMarkdown(target, text) {
  target.innerHTML = DOMPurify.sanitize(md.render(text || ''), PURIFY);
  for (const pre of target.querySelectorAll('pre')) addCodeBar(pre);
}

function addCodeBar(pre) {
  const code = pre.querySelector('code');
  if (!code) return;
  const language = [...code.classList].find((name) => name.startsWith('language-'));
  const copy = h('button', {
    type: 'button',
    class: 'copy',
    text: 'Copy',
    'aria-label': 'Copy the code',
    onclick: () => copyText(code.textContent, copy),
  });
  pre.prepend(h('div', { class: 'code-bar' }, h('span', { text: language?.slice(9) || 'code' }), copy));
}

/** Put text on the clipboard and say so on the button that asked. */
export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    flash(button, 'Copied');
  } catch {
    flash(button, 'Copy failed');
  }
}

function flash(button, words) {
  if (!button) return;
  const before = button.dataset.label || button.textContent;
  button.dataset.label = before;
  button.textContent = words;
  setTimeout(() => {
    button.textContent = before;
  }, 1200);
}
