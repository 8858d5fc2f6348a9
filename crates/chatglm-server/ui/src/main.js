// The chat page of `chatglm serve`: streams /v1/chat/completions (SSE),
// keeps the multi-round history and renders replies as sanitized markdown.

import { renderMarkdown, escapeHtml } from './markdown.js';

const $ = (id) => document.getElementById(id);
const els = {
  messages: $('messages'),
  empty: $('empty'),
  composer: $('composer'),
  input: $('input'),
  send: $('send'),
  stop: $('stop'),
  clear: $('clear'),
  settings: $('settings'),
  settingsToggle: $('settings-toggle'),
  modelId: $('model-id'),
  system: $('system'),
  resetSettings: $('reset-settings'),
  apiKeyButton: $('api-key-button'),
  keyDialog: $('key-dialog'),
  keyForm: $('key-form'),
  keyInput: $('key-input'),
  keyReason: $('key-reason'),
  keyCancel: $('key-cancel'),
  keyForget: $('key-forget'),
};

const STORAGE = { settings: 'chatglm.settings', apiKey: 'chatglm.apiKey' };
// Defaults as the official ChatGLM2 web demo (top_p 0.8, temperature 0.8).
const DEFAULTS = { max_tokens: 2048, top_p: 0.8, temperature: 0.8 };
const SLIDERS = [
  { key: 'max_tokens', range: $('max-tokens'), num: $('max-tokens-num'), min: 1, max: 32768, int: true },
  { key: 'top_p', range: $('top-p'), num: $('top-p-num'), min: 0.01, max: 1 },
  { key: 'temperature', range: $('temperature'), num: $('temperature-num'), min: 0, max: 2 },
];

const storage = {
  get(k) {
    try {
      return localStorage.getItem(k);
    } catch {
      return null;
    }
  },
  set(k, v) {
    try {
      if (v === null || v === undefined || v === '') localStorage.removeItem(k);
      else localStorage.setItem(k, v);
    } catch {
      /* private mode: keep in memory only */
    }
  },
};

// ---- state ----------------------------------------------------------------
/** Completed rounds sent back to the server: alternating user / assistant. */
let history = [];
let settings = loadSettings();
let apiKey = storage.get(STORAGE.apiKey) || '';
let current = null; // { controller, view, text, stopped }
let generation = 0; // bumped by "clear" so a late reply cannot land in a new conversation

function loadSettings() {
  try {
    const s = JSON.parse(storage.get(STORAGE.settings) || '{}');
    const out = { ...DEFAULTS };
    for (const k of Object.keys(DEFAULTS)) if (typeof s[k] === 'number' && Number.isFinite(s[k])) out[k] = s[k];
    return out;
  } catch {
    return { ...DEFAULTS };
  }
}

function saveSettings() {
  storage.set(STORAGE.settings, JSON.stringify(settings));
}

// ---- settings panel -------------------------------------------------------
function clamp(v, lo, hi) {
  return Math.min(hi, Math.max(lo, v));
}

function showSetting(s) {
  const v = settings[s.key];
  s.num.value = String(v);
  s.range.value = String(Math.min(v, Number(s.range.max)));
}

for (const s of SLIDERS) {
  showSetting(s);
  s.range.addEventListener('input', () => {
    settings[s.key] = s.int ? Math.round(Number(s.range.value)) : Number(s.range.value);
    s.num.value = s.range.value;
    saveSettings();
  });
  s.num.addEventListener('input', () => {
    const n = Number(s.num.value);
    if (s.num.value === '' || !Number.isFinite(n)) return;
    settings[s.key] = clamp(s.int ? Math.round(n) : n, s.min, s.max);
    s.range.value = String(Math.min(settings[s.key], Number(s.range.max)));
    saveSettings();
  });
  s.num.addEventListener('change', () => showSetting(s));
}

els.resetSettings.addEventListener('click', () => {
  settings = { ...DEFAULTS };
  SLIDERS.forEach(showSetting);
  saveSettings();
});

els.settingsToggle.addEventListener('click', () => {
  const open = !document.body.classList.contains('settings-open');
  document.body.classList.toggle('settings-open', open);
  document.body.classList.toggle('settings-closed', !open);
  els.settingsToggle.setAttribute('aria-expanded', String(open));
});

// ---- API key --------------------------------------------------------------
let keyDialogResolve = null;

function askForKey(reason) {
  els.keyReason.innerHTML = reason;
  els.keyInput.value = apiKey;
  if (!els.keyDialog.open) els.keyDialog.showModal();
  els.keyInput.focus();
  return new Promise((resolve) => {
    keyDialogResolve = resolve;
  });
}

function closeKeyDialog(saved) {
  if (els.keyDialog.open) els.keyDialog.close();
  const r = keyDialogResolve;
  keyDialogResolve = null;
  if (r) r(saved);
}

els.keyForm.addEventListener('submit', (e) => {
  e.preventDefault();
  apiKey = els.keyInput.value.trim();
  storage.set(STORAGE.apiKey, apiKey);
  closeKeyDialog(true);
  loadModel();
});
els.keyCancel.addEventListener('click', () => closeKeyDialog(false));
els.keyForget.addEventListener('click', () => {
  apiKey = '';
  storage.set(STORAGE.apiKey, '');
  els.keyInput.value = '';
});
els.keyDialog.addEventListener('cancel', () => closeKeyDialog(false));
els.apiKeyButton.addEventListener('click', () =>
  askForKey('Set the key for a server started with <code>--api-key</code>. It is kept in this browser\'s localStorage and sent as <code>Authorization: Bearer …</code>.'),
);

const KEY_HELP =
  'This server requires an API key (<code>--api-key</code>). It is kept in this browser\'s localStorage and sent as <code>Authorization: Bearer …</code>.';

function headers() {
  const h = { 'Content-Type': 'application/json', Accept: 'text/event-stream' };
  if (apiKey) h.Authorization = `Bearer ${apiKey}`;
  return h;
}

// ---- model id -------------------------------------------------------------
async function loadModel() {
  try {
    const r = await fetch('/v1/models', { headers: headers() });
    if (r.status === 401) {
      els.modelId.textContent = 'API key needed';
      askForKey((apiKey ? '<strong>The saved key was refused (HTTP 401).</strong> ' : '') + KEY_HELP);
      return;
    }
    const j = await r.json();
    const model = (j && j.data && j.data[0]) || {};
    const id = model.id;
    els.modelId.textContent = id || 'unknown model';
    if (id) els.modelId.dataset.id = id;
    // A ChatGLM3 model starts conversations with its demos' system prompt
    // (editable; ChatGLM2 has no system role, so its field stays empty).
    if (model.family) document.body.dataset.family = model.family;
    if (model.family === 'chatglm3' && typeof model.system_prompt === 'string' && !els.system.value.trim()) {
      els.system.value = model.system_prompt;
    }
  } catch {
    els.modelId.textContent = 'server unreachable';
  }
}

// ---- message views --------------------------------------------------------
function scrollToEnd(force) {
  const m = els.messages;
  const nearEnd = m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  if (force || nearEnd) m.scrollTop = m.scrollHeight;
}

function addMessage(role, text) {
  els.empty.hidden = true;
  const wrap = document.createElement('div');
  wrap.className = `msg ${role}`;
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.setAttribute('aria-hidden', 'true');
  avatar.textContent = role === 'user' ? '你' : 'G';
  const body = document.createElement('div');
  body.className = 'bubble';
  const content = document.createElement('div');
  content.className = role === 'user' ? 'content plain' : 'content markdown';
  body.appendChild(content);
  const meta = document.createElement('div');
  meta.className = 'meta';
  body.appendChild(meta);
  wrap.append(avatar, body);
  els.messages.appendChild(wrap);
  const view = { wrap, content, meta, raw: '', frame: 0 };
  if (role === 'user') {
    content.textContent = text;
    wrap.chatglmRaw = text;
  } else {
    wrap.dataset.status = 'waiting';
    wrap.chatglmRaw = '';
    content.innerHTML = '<span class="typing" aria-label="thinking"><i></i><i></i><i></i></span>';
  }
  scrollToEnd(true);
  return view;
}

function renderAssistant(view, text, streaming) {
  view.raw = text;
  view.wrap.chatglmRaw = text;
  if (view.frame) return;
  const draw = () => {
    view.frame = 0;
    view.content.innerHTML = renderMarkdown(view.raw);
    if (view.wrap.dataset.status === 'streaming') addCursor(view.content);
    scrollToEnd(false);
  };
  if (streaming) view.frame = requestAnimationFrame(draw);
  else draw();
}

// The typewriter cursor goes at the end of the last text block.
function addCursor(root) {
  let target = root;
  for (let el = root.lastElementChild; el; el = el.lastElementChild) {
    if (/^(P|LI|H[1-6]|TD|TH)$/.test(el.tagName)) target = el;
    else if (!/^(UL|OL|BLOCKQUOTE|TABLE|TBODY|THEAD|TR)$/.test(el.tagName)) break;
  }
  const c = document.createElement('span');
  c.className = 'cursor';
  c.setAttribute('aria-hidden', 'true');
  target.appendChild(c);
}

function finishAssistant(view, status, note) {
  if (view.frame) {
    cancelAnimationFrame(view.frame);
    view.frame = 0;
  }
  view.wrap.dataset.status = status;
  if (view.raw || status === 'done' || status === 'stopped') {
    view.content.innerHTML = view.raw ? renderMarkdown(view.raw) : '<p class="muted">(empty reply)</p>';
  }
  if (note) view.meta.innerHTML = note;
  scrollToEnd(false);
}

function showError(view, html) {
  if (view.frame) {
    cancelAnimationFrame(view.frame);
    view.frame = 0;
  }
  view.wrap.dataset.status = 'error';
  const partial = view.raw ? renderMarkdown(view.raw) : '';
  view.content.innerHTML = `${partial}<div class="error" role="alert">${html}</div>`;
  scrollToEnd(true);
}

function errorHtml(status, statusText, body) {
  let message = '';
  let type = '';
  let code = '';
  try {
    const j = JSON.parse(body);
    if (j && j.error) {
      message = j.error.message || '';
      type = j.error.type || '';
      code = j.error.code || '';
    }
  } catch {
    message = body.slice(0, 500);
  }
  const head = status ? `HTTP ${status}${statusText ? ` ${escapeHtml(statusText)}` : ''}` : 'Error';
  const tags = [type, code].filter(Boolean).map((t) => `<code>${escapeHtml(t)}</code>`).join(' ');
  return `<strong>${head}</strong>${tags ? ` ${tags}` : ''}<br>${escapeHtml(message || 'The server returned an error.')}`;
}

// Copy buttons on code blocks (event delegation: rendered HTML is replaced often).
els.messages.addEventListener('click', async (e) => {
  const btn = e.target.closest && e.target.closest('.copy-btn');
  if (!btn) return;
  const code = btn.closest('.code-block')?.querySelector('code');
  if (!code) return;
  const ok = await copyText(code.textContent);
  btn.textContent = ok ? 'Copied ✓' : 'Copy failed';
  btn.classList.toggle('copied', ok);
  setTimeout(() => {
    btn.textContent = 'Copy';
    btn.classList.remove('copied');
  }, 1500);
});

async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall back below */
  }
  // Plain-HTTP pages (e.g. served on a LAN address) have no clipboard API.
  const ta = document.createElement('textarea');
  ta.value = text;
  ta.setAttribute('readonly', '');
  ta.style.position = 'fixed';
  ta.style.opacity = '0';
  document.body.appendChild(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  ta.remove();
  return ok;
}

// ---- sending --------------------------------------------------------------
function setBusy(busy) {
  document.body.dataset.busy = String(busy);
  els.send.disabled = busy;
  els.stop.disabled = !busy;
}

function autoGrow() {
  const ta = els.input;
  ta.style.height = 'auto';
  if (!ta.value) {
    ta.style.height = ''; // the placeholder must not size the box
    return;
  }
  ta.style.height = `${Math.min(ta.scrollHeight, window.innerHeight * 0.35)}px`;
}

els.input.addEventListener('input', autoGrow);
els.input.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
    e.preventDefault();
    if (!current) els.composer.requestSubmit();
  }
});
document.addEventListener('keydown', (e) => {
  if (e.key === 'Escape' && current && !els.keyDialog.open) {
    e.preventDefault();
    stop();
  }
});

els.composer.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = els.input.value;
  if (!text.trim() || current) return;
  els.input.value = '';
  autoGrow();
  send(text);
});

els.stop.addEventListener('click', stop);

function stop() {
  if (!current) return;
  current.stopped = true;
  current.controller.abort();
}

els.clear.addEventListener('click', () => {
  stop();
  generation += 1;
  history = [];
  for (const n of [...els.messages.querySelectorAll('.msg')]) n.remove();
  els.empty.hidden = false;
  els.input.focus();
});

function buildMessages(query) {
  const msgs = [];
  const sys = els.system.value.trim();
  if (sys) msgs.push({ role: 'system', content: sys });
  return msgs.concat(history, [{ role: 'user', content: query }]);
}

async function send(query) {
  const myGeneration = generation;
  addMessage('user', query);
  const view = addMessage('assistant', '');
  const controller = new AbortController();
  const run = { controller, view, text: '', stopped: false };
  current = run;
  setBusy(true);

  const body = {
    model: els.modelId.dataset.id || 'chatglm2-6b',
    messages: buildMessages(query),
    stream: true,
    max_tokens: settings.max_tokens,
    top_p: settings.top_p,
    temperature: settings.temperature,
  };

  let finish = null;
  let failed = false;
  try {
    const resp = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!resp.ok) {
      failed = true;
      const text = await resp.text();
      showError(view, errorHtml(resp.status, resp.statusText, text));
      if (resp.status === 401) {
        view.meta.innerHTML = '';
        const saved = await askForKey((apiKey ? '<strong>The key was refused (HTTP 401).</strong> ' : '') + KEY_HELP);
        if (saved && myGeneration === generation) {
          // Resend the same question with the new key.
          view.wrap.previousElementSibling?.remove();
          view.wrap.remove();
          current = null;
          setBusy(false);
          send(query);
          return;
        }
      }
      return;
    }
    view.wrap.dataset.status = 'streaming';
    finish = await readStream(resp, run);
  } catch (err) {
    if (run.stopped || controller.signal.aborted) {
      // Stopped by the user: keep what came so far.
    } else if (err && err.streamError) {
      failed = true;
      showError(view, errorHtml(0, '', err.body));
    } else {
      failed = true;
      showError(view, `<strong>Network error</strong><br>${escapeHtml(err && err.message ? err.message : String(err))}`);
    }
  } finally {
    if (current === run) {
      current = null;
      setBusy(false);
    }
  }

  if (failed) {
    view.wrap.classList.add('failed');
    return;
  }
  if (run.stopped) {
    finishAssistant(view, 'stopped', '<span class="note">Stopped · 已停止</span>');
  } else if (finish === 'length') {
    finishAssistant(view, 'done', '<span class="note">Reached max new tokens · 已达最大生成长度</span>');
  } else {
    finishAssistant(view, 'done', '');
  }
  // Keep the round in the history (a stopped reply keeps its partial text, as the official demo).
  if (myGeneration === generation && run.text.trim()) {
    history.push({ role: 'user', content: query }, { role: 'assistant', content: run.text.trim() });
  }
  if (myGeneration === generation && !('ontouchstart' in window)) els.input.focus();
}

/** Reads the SSE body; returns the finish reason. Throws {streamError, body} on an `error` event. */
async function readStream(resp, run) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    buf = buf.replace(/\r\n?/g, '\n');
    let idx;
    while ((idx = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, idx);
      buf = buf.slice(idx + 2);
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      if (!data) continue;
      if (data === '[DONE]') return finish;
      let obj;
      try {
        obj = JSON.parse(data);
      } catch {
        continue;
      }
      if (obj.error) {
        const e = new Error(obj.error.message || 'stream error');
        e.streamError = true;
        e.body = data;
        throw e;
      }
      const choice = obj.choices && obj.choices[0];
      if (!choice) continue;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        run.text += piece;
        renderAssistant(run.view, run.text, true);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  return finish;
}

// Phone-width screens start with the settings folded away and a short placeholder.
if (window.matchMedia('(max-width: 820px)').matches) {
  document.body.classList.add('settings-closed');
  els.input.placeholder = els.input.dataset.shortPlaceholder;
} else {
  document.body.classList.add('settings-open');
}
els.settingsToggle.setAttribute('aria-expanded', String(document.body.classList.contains('settings-open')));

window.chatglmUI = { get history() { return history.slice(); }, get settings() { return { ...settings }; } };

setBusy(false);
loadModel();
els.input.focus();
