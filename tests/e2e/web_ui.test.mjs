// End-to-end test of the web chat page of `chatglm serve`, in headless system
// Chromium (playwright-core; no browser download). Run through run.sh.
//
// Env: CHATGLM_BIN (the binary), CHATGLM_MODEL (model folder), CHROMIUM
// (browser, default /usr/bin/chromium), SCREENSHOTS (folder for the docs
// screenshots, default docs/screenshots), E2E_ARTIFACTS (failure screenshots
// and server logs, default target/e2e).

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const BIN = process.env.CHATGLM_BIN || path.join(root, 'target/release/chatglm');
const MODEL = process.env.CHATGLM_MODEL || path.resolve(root, '../shared/testdata/dev/model/safetensors-f32');
const CHATGLM3_MODEL = process.env.CHATGLM3_MODEL || path.join(root, 'golden/family/chatglm3/tiny/model');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.SCREENSHOTS || path.join(root, 'docs/screenshots');
const ARTIFACTS = process.env.E2E_ARTIFACTS || path.join(root, 'target/e2e');
const DIST = path.join(root, 'crates/chatglm-server/ui/dist/index.html');

const QUESTION = '你好！Please introduce yourself. 介绍一下你自己';
const FOLLOW_UP = 'Tell me more, 再详细一点';
const MAX_TOKENS = 48;
const API_KEY = 'e2e-secret-key';

// ---------------------------------------------------------------- helpers
const results = [];
let failed = 0;

async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push(['PASS', name]);
    console.log(`PASS  ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed += 1;
    results.push(['FAIL', name]);
    console.log(`FAIL  ${name}\n      ${String((e && e.stack) || e).split('\n').slice(0, 6).join('\n      ')}`);
    for (const p of openPages) {
      try {
        const f = path.join(ARTIFACTS, `failure-${results.length}-${p.label}.png`);
        await p.page.screenshot({ path: f, fullPage: true });
        console.log(`      screenshot: ${path.relative(root, f)}`);
      } catch {
        /* page closed */
      }
    }
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

function assertEq(actual, expected, msg) {
  if (actual !== expected) throw new Error(`${msg}\n  expected: ${JSON.stringify(expected)}\n  actual:   ${JSON.stringify(actual)}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const servers = [];

async function startServer(label, extraArgs = [], model = MODEL) {
  const port = await freePort();
  const args = ['serve', '-m', model, '--port', String(port), ...extraArgs];
  const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } });
  let log = '';
  proc.stdout.on('data', (d) => (log += d));
  proc.stderr.on('data', (d) => (log += d));
  const server = { label, port, proc, url: `http://127.0.0.1:${port}`, log: () => log };
  servers.push(server);
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${label} server exited (${proc.exitCode}):\n${log}`);
    try {
      const r = await fetch(`${server.url}/health`);
      if (r.ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) throw new Error(`${label} server did not answer /health in 120 s:\n${log}`);
    await sleep(100);
  }
  console.log(`      ${label} server: ${BIN} ${args.join(' ')} (pid ${proc.pid})`);
  return server;
}

async function stopServers() {
  for (const s of servers) {
    writeFileSync(path.join(ARTIFACTS, `server-${s.label}.log`), s.log());
    if (s.proc.exitCode === null) {
      s.proc.kill('SIGTERM');
      const t = Date.now();
      while (s.proc.exitCode === null && s.proc.signalCode === null && Date.now() - t < 10_000) await sleep(50);
      if (s.proc.exitCode === null && s.proc.signalCode === null) s.proc.kill('SIGKILL');
    }
  }
}

/** `chatglm generate --temperature 0 --json` → its `text` (the greedy answer). */
function greedy(query, maxNew, history) {
  const args = ['generate', '-m', MODEL, '-p', query, '--temperature', '0', '--max-new-tokens', String(maxNew), '--json'];
  let tmp;
  if (history) {
    tmp = mkdtempSync(path.join(tmpdir(), 'chatglm-e2e-hist-'));
    const f = path.join(tmp, 'history.json');
    writeFileSync(f, JSON.stringify(history));
    args.push('--history', f);
  }
  try {
    const out = execFileSync(BIN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return JSON.parse(out.trim().split('\n').pop());
  } finally {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }
}

const openPages = [];

async function newPage(context, label, viewport) {
  const page = await context.newPage();
  await page.setViewportSize(viewport);
  const info = { label, page, errors: [], requests: [], chatBodies: [] };
  page.on('pageerror', (e) => info.errors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/status of 40[01]|Failed to load resource/.test(m.text())) info.errors.push(`console: ${m.text()}`);
  });
  page.on('request', (r) => {
    info.requests.push(r.url());
    if (r.url().endsWith('/v1/chat/completions')) info.chatBodies.push({ body: JSON.parse(r.postData() || '{}'), headers: r.headers() });
  });
  openPages.push(info);
  return info;
}

const lastAssistant = (page) => page.locator('.msg.assistant').last();
const rawOf = (loc) => loc.evaluate((el) => el.chatglmRaw);
const statusOf = (loc) => loc.evaluate((el) => el.dataset.status);

async function setSetting(page, id, value) {
  await page.fill(`#${id}-num`, String(value));
  await page.locator(`#${id}-num`).dispatchEvent('change');
}

async function ask(page, text) {
  const before = await page.locator('.msg.assistant').count();
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('.msg.assistant').length === n + 1, before);
}

async function waitIdle(page, timeout = 60_000) {
  await page.waitForFunction(
    () => {
      const a = [...document.querySelectorAll('.msg.assistant')].pop();
      return document.body.dataset.busy === 'false' && a && ['done', 'stopped', 'error'].includes(a.dataset.status);
    },
    null,
    { timeout },
  );
}

/** An OpenAI-style SSE body streaming `text` in small pieces (for canned replies). */
function sse(text, finish = 'stop') {
  const chunk = (delta, fr = null) =>
    `data: ${JSON.stringify({ id: 'chatcmpl-e2e', object: 'chat.completion.chunk', created: 0, model: 'canned', choices: [{ index: 0, delta, finish_reason: fr }] })}\n\n`;
  let out = chunk({ role: 'assistant', content: '' });
  const chars = [...text];
  for (let i = 0; i < chars.length; i += 6) out += chunk({ content: chars.slice(i, i + 6).join('') });
  return out + chunk({}, finish) + 'data: [DONE]\n\n';
}

const CANNED_QUESTION = '用 Python 写一个快速排序，并说明时间复杂度。Explain quicksort briefly.';
const CANNED_ANSWER = [
  '快速排序（Quick Sort）是一种**分治**算法：选一个基准（pivot），把数组分成小于、等于、大于基准的三部分，再递归排序。',
  '',
  '```python',
  'def quick_sort(arr):',
  '    """Return a sorted copy of arr."""',
  '    if len(arr) <= 1:',
  '        return arr',
  '    pivot = arr[len(arr) // 2]',
  '    left = [x for x in arr if x < pivot]',
  '    mid = [x for x in arr if x == pivot]',
  '    right = [x for x in arr if x > pivot]',
  '    return quick_sort(left) + mid + quick_sort(right)',
  '```',
  '',
  '平均时间复杂度为 $O(n \\log n)$，最坏情况为 $O(n^2)$。平均情况的递推式：',
  '',
  '$$T(n) = 2\\,T\\!\\left(\\frac{n}{2}\\right) + O(n) \\implies T(n) = O(n \\log n)$$',
  '',
  '| case | time | 空间 |',
  '|---|---|---|',
  '| average | $O(n \\log n)$ | $O(\\log n)$ |',
  '| worst | $O(n^2)$ | $O(n)$ |',
].join('\n');
const CANNED_FOLLOW_UP = 'Thanks! 用一句话总结。';
const CANNED_ANSWER_2 = 'Quick sort partitions around a pivot and recurses: 平均 $O(n\\log n)$，原地实现只需 $O(\\log n)$ 的栈空间。';

const XSS_ANSWER = [
  'Raw HTML must stay text: <img src=x onerror="window.__xss=1"> <script>window.__xss=2</script>',
  '',
  '<iframe src="javascript:window.__xss=3"></iframe>',
  '',
  '[click me](javascript:window.__xss=4) and `inline <b>code</b>`',
  '',
  '```js',
  'const answer = 42; // <b>not bold</b>',
  '```',
].join('\n');

// ---------------------------------------------------------------- main
mkdirSync(ARTIFACTS, { recursive: true });
mkdirSync(SHOTS, { recursive: true });
const userDataDir = mkdtempSync(path.join(tmpdir(), 'chatglm-e2e-chromium-'));
let context;

try {
  const server = await startServer('main');
  const origin = server.url;

  await check('GET / serves the built ui/dist/index.html (rebuild the binary if this fails)', async () => {
    const r = await fetch(`${origin}/`);
    assertEq(r.status, 200, 'status');
    assert((r.headers.get('content-type') || '').startsWith('text/html'), `content-type ${r.headers.get('content-type')}`);
    const body = await r.text();
    assert(body === readFileSync(DIST, 'utf8'), 'served page differs from crates/chatglm-server/ui/dist/index.html: the binary is stale');
  });

  const golden = greedy(QUESTION, MAX_TOKENS);
  const goldenFollow = greedy(FOLLOW_UP, MAX_TOKENS, [[QUESTION, golden.text]]);
  const goldenLong = greedy(QUESTION, 4096);
  console.log(`      greedy answer (${golden.generated_ids.length} tokens): ${JSON.stringify(golden.text)}`);

  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1280, height: 800 },
    locale: 'zh-CN',
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin });

  // ------------------------------------------------ desktop, real model
  const desk = await newPage(context, 'desktop', { width: 1280, height: 800 });
  const page = desk.page;

  await check('page loads with the model id, default settings, no external requests', async () => {
    await page.goto(`${origin}/`);
    await page.waitForFunction(() => document.getElementById('model-id').dataset.id);
    assertEq(await page.textContent('#model-id'), 'safetensors-f32', 'model id from /v1/models');
    const s = await page.evaluate(() => window.chatglmUI.settings);
    assertEq(JSON.stringify(s), JSON.stringify({ max_tokens: 2048, top_p: 0.8, temperature: 0.8 }), 'default settings');
    assert(await page.locator('#send').isEnabled(), 'send enabled');
    assert(await page.locator('#stop').isDisabled(), 'stop disabled while idle');
    const foreign = desk.requests.filter((u) => !u.startsWith(origin) && !u.startsWith('data:'));
    assertEq(foreign.length, 0, `requests outside the server: ${foreign.join(', ')}`);
  });

  await check('Shift+Enter inserts a newline, Enter on an empty box sends nothing', async () => {
    await page.click('#input');
    await page.keyboard.type('line one');
    await page.keyboard.press('Shift+Enter');
    await page.keyboard.type('line two');
    assertEq(await page.inputValue('#input'), 'line one\nline two', 'textarea value');
    assertEq(await page.locator('.msg').count(), 0, 'nothing sent');
    await page.fill('#input', '   ');
    await page.press('#input', 'Enter');
    await sleep(200);
    assertEq(await page.locator('.msg').count(), 0, 'blank input not sent');
    await page.fill('#input', '');
  });

  await check('temperature 0: the streamed answer equals `chatglm generate --temperature 0`', async () => {
    await setSetting(page, 'temperature', 0);
    await setSetting(page, 'max-tokens', MAX_TOKENS);
    assertEq(await page.inputValue('#temperature'), '0', 'slider follows the number');
    await ask(page, QUESTION);
    await waitIdle(page);
    const a = lastAssistant(page);
    assertEq(await statusOf(a), 'done', 'status');
    assertEq((await rawOf(a)).trim(), golden.text, 'answer text');
    const body = desk.chatBodies.at(-1).body;
    assertEq(body.stream, true, 'stream');
    assertEq(body.temperature, 0, 'temperature sent');
    assertEq(body.max_tokens, MAX_TOKENS, 'max length → max_tokens');
    assertEq(body.top_p, 0.8, 'top_p');
    assertEq(JSON.stringify(body.messages), JSON.stringify([{ role: 'user', content: QUESTION }]), 'messages');
    assert((await a.locator('.content').innerText()).trim().length > 0, 'rendered text visible');
  });

  await check('multi-round: the follow-up sends the whole history and matches `generate --history`', async () => {
    await ask(page, FOLLOW_UP);
    await waitIdle(page);
    const body = desk.chatBodies.at(-1).body;
    assertEq(
      JSON.stringify(body.messages),
      JSON.stringify([
        { role: 'user', content: QUESTION },
        { role: 'assistant', content: golden.text },
        { role: 'user', content: FOLLOW_UP },
      ]),
      'messages alternate user/assistant',
    );
    assertEq((await rawOf(lastAssistant(page))).trim(), goldenFollow.text, 'second answer');
    assertEq((await page.evaluate(() => window.chatglmUI.history)).length, 4, 'history holds two rounds');
  });

  await check('"clear history" empties the conversation; asking again gives the same greedy answer', async () => {
    await page.click('#clear');
    assertEq(await page.locator('.msg').count(), 0, 'messages removed');
    assert(await page.locator('#empty').isVisible(), 'empty state shown');
    assertEq((await page.evaluate(() => window.chatglmUI.history)).length, 0, 'history empty');
    await ask(page, QUESTION);
    await waitIdle(page);
    assertEq(desk.chatBodies.at(-1).body.messages.length, 1, 'one message after clear');
    assertEq((await rawOf(lastAssistant(page))).trim(), golden.text, 'same answer after clear');
  });

  await check('server errors are shown readably (HTTP 400 context_length_exceeded)', async () => {
    await page.click('#clear');
    const long = Array.from({ length: 400 }, (_, i) => `word${i}`).join(' ');
    await ask(page, long);
    await waitIdle(page);
    const a = lastAssistant(page);
    assertEq(await statusOf(a), 'error', 'status');
    const err = await a.locator('.error').innerText();
    assert(/HTTP 400/.test(err), `shows the status: ${err}`);
    assert(/context_length_exceeded/.test(err), `shows the code: ${err}`);
    assert(err.split('\n').pop().trim().length > 10, `shows error.message: ${err}`);
    console.log(`      error shown: ${JSON.stringify(err)}`);
    assertEq((await page.evaluate(() => window.chatglmUI.history)).length, 0, 'failed round not kept');
    assert(await page.locator('#send').isEnabled(), 'ready again');
  });

  await check('"stop generating" aborts a long generation midway; the UI is ready again', async () => {
    await page.click('#clear');
    await setSetting(page, 'max-tokens', 32768);
    // The dev model writes ~3000 tokens/s, so slow the page's network down to
    // see a reply midway (the server side of cancelling is tested in cargo test).
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 20, downloadThroughput: 1500, uploadThroughput: -1 });
    await ask(page, QUESTION);
    const a = lastAssistant(page);
    await page.waitForFunction(() => [...document.querySelectorAll('.msg.assistant')].pop().chatglmRaw.length >= 8, null, { timeout: 60_000 });
    assertEq(await statusOf(a), 'streaming', 'still streaming');
    assert(await page.locator('#stop').isEnabled(), 'stop enabled while generating');
    assert(await page.locator('#send').isDisabled(), 'send disabled while generating');
    const t0 = (await rawOf(a)).length;
    await sleep(1500);
    const t1 = (await rawOf(a)).length;
    assert(t1 > t0, `answer grows while streaming (${t0} → ${t1})`);
    await page.click('#stop');
    await waitIdle(page, 10_000);
    const stopped = await rawOf(a);
    assertEq(await statusOf(a), 'stopped', 'status');
    await sleep(2000);
    assertEq((await rawOf(a)).length, stopped.length, 'answer stopped growing');
    assert(stopped.trim().length > 0, 'partial answer kept');
    assert(goldenLong.text.startsWith(stopped.trim()), 'partial answer is a prefix of the full greedy answer');
    assert(stopped.trim().length < goldenLong.text.length, `stopped midway (${stopped.trim().length} of ${goldenLong.text.length} chars)`);
    console.log(`      stopped after ${stopped.trim().length} of ${goldenLong.text.length} chars`);
    assert(await page.locator('#send').isEnabled(), 'send enabled again');
    assert(await page.locator('#stop').isDisabled(), 'stop disabled again');
    assertEq(await page.evaluate(() => document.body.dataset.busy), 'false', 'not busy');
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await cdp.detach();
    const metrics = await (await fetch(`${origin}/metrics`)).text();
    const cancelled = metrics.match(/chatglm_requests_finished_total\{reason="cancelled"\} (\d+)/);
    console.log(`      server /metrics: requests cancelled = ${cancelled ? cancelled[1] : '?'} (0 when the tiny model finished before the abort)`);
    // Ready again: the next question streams and completes, with the partial round in the history.
    await setSetting(page, 'max-tokens', MAX_TOKENS);
    await ask(page, FOLLOW_UP);
    await waitIdle(page);
    assertEq(await statusOf(lastAssistant(page)), 'done', 'next answer done');
    const msgs = desk.chatBodies.at(-1).body.messages;
    assertEq(msgs.length, 3, 'stopped round kept in history');
    assertEq(msgs[1].content, stopped.trim(), 'with its partial text');
  });

  await check('no page errors on the desktop page', async () => {
    assertEq(desk.errors.length, 0, `page errors: ${desk.errors.join(' | ')}`);
  });

  // ------------------------------------------------ rendering (canned replies)
  const demo = await newPage(context, 'render', { width: 1280, height: 800 });
  let canned = XSS_ANSWER;
  await demo.page.route('**/v1/chat/completions', (route) =>
    route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' }, body: sse(canned) }),
  );

  await check('model output is sanitized: raw HTML is shown as text, javascript: links dropped', async () => {
    await demo.page.goto(`${origin}/`);
    await ask(demo.page, 'xss?');
    await waitIdle(demo.page);
    const a = lastAssistant(demo.page);
    assertEq(await demo.page.evaluate(() => window.__xss), undefined, 'no script ran');
    assertEq(await a.locator('img, script, iframe, b').count(), 0, 'no injected elements');
    const text = await a.locator('.content').innerText();
    assert(text.includes('<img src=x onerror="window.__xss=1">'), `raw HTML visible as text: ${text}`);
    const hrefs = await a.locator('a').evaluateAll((as) => as.map((x) => x.getAttribute('href')));
    assert(hrefs.every((h) => !h || !/^javascript:/i.test(h)), `no javascript: links: ${hrefs}`);
    await a.locator('a', { hasText: 'click me' }).click().catch(() => {});
    await sleep(200);
    assertEq(await demo.page.evaluate(() => window.__xss), undefined, 'link did not run script');
  });

  await check('markdown, highlighted code with a working copy button, KaTeX math', async () => {
    await demo.page.click('#clear');
    canned = CANNED_ANSWER;
    await ask(demo.page, CANNED_QUESTION);
    await waitIdle(demo.page);
    canned = CANNED_ANSWER_2;
    await ask(demo.page, CANNED_FOLLOW_UP);
    await waitIdle(demo.page);
    const a = demo.page.locator('.msg.assistant').first();
    assertEq(await a.locator('strong').first().innerText(), '分治', 'bold');
    assert((await a.locator('.code-block .hljs-keyword').count()) > 0, 'python keywords highlighted');
    assertEq(await a.locator('.code-lang').innerText(), 'python', 'language label');
    assert((await a.locator('.katex').count()) >= 3, 'inline math rendered');
    assertEq(await a.locator('.katex-display').count(), 1, 'display math rendered');
    assertEq(await a.locator('table th').count(), 3, 'table rendered');
    const fontOk = await demo.page.evaluate(async () => {
      await document.fonts.ready;
      return document.fonts.check('16px KaTeX_Main') && document.fonts.check('16px KaTeX_Math');
    });
    assert(fontOk, 'KaTeX fonts loaded from the page (inlined)');
    await a.locator('.copy-btn').click();
    await demo.page.waitForFunction(() => document.querySelector('.copy-btn').textContent.startsWith('Copied'));
    const clip = await demo.page.evaluate(() => navigator.clipboard.readText());
    assert(clip.startsWith('def quick_sort(arr):') && clip.includes('return quick_sort(left) + mid + quick_sort(right)'), `clipboard: ${clip}`);
    assertEq(demo.chatBodies.at(-1).body.messages.length, 3, 'follow-up carried the history');
  });

  await check('desktop screenshot (1280×800)', async () => {
    await demo.page.waitForFunction(() => document.querySelector('.copy-btn').textContent === 'Copy');
    await demo.page.locator('.messages').evaluate((m) => m.scrollTo({ top: 0, behavior: 'instant' }));
    await demo.page.fill('#input', '');
    await demo.page.locator('#input').blur();
    await demo.page.screenshot({ path: path.join(SHOTS, 'web-ui-desktop.png') });
  });

  const phone = await newPage(context, 'phone', { width: 390, height: 844 });
  await phone.page.route('**/v1/chat/completions', (route) =>
    route.fulfill({ status: 200, headers: { 'content-type': 'text/event-stream' }, body: sse(canned) }),
  );

  await check('phone width (390×844): no horizontal overflow, settings fold away, screenshot', async () => {
    const p = phone.page;
    await p.goto(`${origin}/`);
    assert(!(await p.locator('#settings').isVisible()), 'settings folded on a phone');
    canned = CANNED_ANSWER;
    await ask(p, CANNED_QUESTION);
    await waitIdle(p);
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 0, `page wider than the screen by ${overflow}px`);
    const send = await p.locator('#send').boundingBox();
    assert(send && send.x + send.width <= 390 && send.y + send.height <= 844, `send button on screen: ${JSON.stringify(send)}`);
    const box = await p.locator('#input').boundingBox();
    assert(box.height < 60, `empty input box is one line high (${box.height}px)`);
    await p.locator('.messages').evaluate((m) => m.scrollTo({ top: 0, behavior: 'instant' }));
    await p.locator('#input').blur();
    await p.screenshot({ path: path.join(SHOTS, 'web-ui-phone.png') });
    await p.click('#settings-toggle');
    assert(await p.locator('#settings').isVisible(), 'settings open on tap');
    const temp = await p.locator('#temperature').boundingBox();
    assert(temp && temp.x >= 0 && temp.x + temp.width <= 390, 'temperature slider fits');
    await p.click('#settings-toggle');
  });

  // ------------------------------------------------ --api-key
  const keyed = await startServer('api-key', ['--api-key', API_KEY]);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: keyed.url });
  const kp = await newPage(context, 'api-key', { width: 1280, height: 800 });

  await check('--api-key: the page asks for the key on 401, stores it and sends it as a Bearer token', async () => {
    const p = kp.page;
    await p.goto(`${keyed.url}/`);
    await p.waitForSelector('#key-dialog[open]');
    await p.fill('#key-input', 'wrong-key');
    await p.click('#key-save');
    await p.waitForSelector('#key-dialog[open]');
    assert(/refused/.test(await p.innerText('#key-reason')), 'says the key was refused');
    await p.fill('#key-input', API_KEY);
    await p.click('#key-save');
    await p.waitForFunction(() => document.getElementById('model-id').dataset.id);
    assertEq(await p.evaluate(() => localStorage.getItem('chatglm.apiKey')), API_KEY, 'key in localStorage');
    await setSetting(p, 'temperature', 0);
    await setSetting(p, 'max-tokens', MAX_TOKENS);
    await ask(p, QUESTION);
    await waitIdle(p);
    assertEq(kp.chatBodies.at(-1).headers.authorization, `Bearer ${API_KEY}`, 'Authorization header');
    assertEq((await rawOf(lastAssistant(p))).trim(), golden.text, 'answer with the key');
    // A key that stops working: the request's 401 is shown and the dialog asks again.
    await p.evaluate(() => localStorage.setItem('chatglm.apiKey', 'stale'));
    await p.reload();
    await p.waitForSelector('#key-dialog[open]');
    await p.click('#key-cancel');
    await ask(p, 'hi');
    await p.waitForSelector('#key-dialog[open]');
    const err = await lastAssistant(p).locator('.error').innerText();
    assert(/HTTP 401/.test(err) && /invalid_api_key/.test(err), `401 shown: ${err}`);
    await p.fill('#key-input', API_KEY);
    await p.click('#key-save');
    await waitIdle(p);
    assertEq(await statusOf(lastAssistant(p)), 'done', 'resent with the new key');
    assertEq(kp.errors.length, 0, `page errors: ${kp.errors.join(' | ')}`);
  });

  // ------------------------------------------------ a ChatGLM3 model
  const chatglm3 = await startServer('chatglm3', [], CHATGLM3_MODEL);
  const c3 = await newPage(context, 'chatglm3', { width: 1280, height: 800 });

  await check('ChatGLM3: the page starts with the demos\' system prompt and sends it as the system message', async () => {
    const p = c3.page;
    await p.goto(chatglm3.url);
    await p.waitForFunction(() => document.body.dataset.family === 'chatglm3');
    const models = await (await fetch(`${chatglm3.url}/v1/models`)).json();
    const prompt = models.data[0].system_prompt;
    assert(/ChatGLM3/.test(prompt), `system prompt from /v1/models: ${prompt}`);
    assertEq(await p.inputValue('#system'), prompt, 'system prompt field');
    await setSetting(p, 'temperature', 0);
    await setSetting(p, 'max-tokens', 8);
    await ask(p, '你好');
    await waitIdle(p);
    const sent = c3.chatBodies.at(-1).body.messages;
    assertEq(JSON.stringify(sent[0]), JSON.stringify({ role: 'system', content: prompt }), 'system message first');
    assertEq(await statusOf(lastAssistant(p)), 'done', 'answered');
    assertEq(c3.errors.length, 0, `page errors: ${c3.errors.join(' | ')}`);
  });
} catch (e) {
  failed += 1;
  console.log(`FAIL  setup: ${(e && e.stack) || e}`);
} finally {
  if (context) await context.close().catch(() => {});
  await stopServers();
  rmSync(userDataDir, { recursive: true, force: true });
}

const passed = results.filter((r) => r[0] === 'PASS').length;
console.log(`\n${passed} passed, ${failed} failed`);
if (failed === 0) console.log(`screenshots: ${path.relative(root, path.join(SHOTS, 'web-ui-desktop.png'))}, ${path.relative(root, path.join(SHOTS, 'web-ui-phone.png'))}`);
process.exit(failed ? 1 : 0);
