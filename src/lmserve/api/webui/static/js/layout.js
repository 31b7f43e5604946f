// The page's frame: the side panels (settings, live log; one open at a time), the
// conversation list as a drawer at a phone's width, and the theme. The theme is an attribute
// on <html> that the CSS reads (light-dark() colours); "auto" leaves it to the system.

import { $ } from './dom.js';

const THEMES = ['auto', 'light', 'dark'];
const THEME_STORAGE = 'lmserve.theme';

/** Open panel `name` ('settings' or 'logs'), or close it if open; null closes both. */
export function showPanel(name) {
  for (const panel of ['settings', 'logs']) {
    const open = panel === name && $(panel).hidden;
    $(panel).hidden = !open;
    $(`toggle-${panel}`).setAttribute('aria-expanded', String(open));
  }
}

export function closeDrawers() {
  showPanel(null);
  $('app').classList.remove('sidebar-open');
}

function applyTheme(theme) {
  if (theme === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $('theme').textContent = theme[0].toUpperCase() + theme.slice(1);
  try {
    localStorage.setItem(THEME_STORAGE, theme);
  } catch {
    /* not remembered */
  }
}

/** The remembered theme, and every control of the frame. */
export function wireLayout() {
  let theme = 'auto';
  try {
    theme = localStorage.getItem(THEME_STORAGE) || 'auto';
  } catch {
    /* storage off: the system's theme */
  }
  applyTheme(THEMES.includes(theme) ? theme : 'auto');
  $('theme').addEventListener('click', () => {
    const now = document.documentElement.dataset.theme || 'auto';
    applyTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
  });
  $('toggle-settings').addEventListener('click', () => showPanel('settings'));
  $('toggle-logs').addEventListener('click', () => showPanel('logs'));
  for (const button of document.querySelectorAll('[data-close]')) {
    button.addEventListener('click', () => showPanel(null));
  }
  $('open-sidebar').addEventListener('click', () => $('app').classList.add('sidebar-open'));
  $('close-sidebar').addEventListener('click', () => $('app').classList.remove('sidebar-open'));
}
