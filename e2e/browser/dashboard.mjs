#!/usr/bin/env node
// Drives the Fleetstream dashboard in a headless Chromium (Debian's `chromium`, through
// playwright-core: no browser download) the way a person would, and exits non-zero with
// a message naming the first expectation that failed. Run by e2e/tests/dashboard.rs;
// `scripts/browser.sh` installs what it needs.
//
// Settings, from the environment or as `--name value` / `--name=value` arguments (the
// argument wins; pass the key through the environment, arguments show in `ps`):
//   DASHBOARD_URL     --url        the dashboard, e.g. http://127.0.0.1:8081/dashboard/ (required)
//   DASHBOARD_API_KEY --key        the API key to sign in with (required)
//   EXPECT_AGENT_ID   --agent      an agent that must be listed; its page is opened (required)
//   EXPECT_TENANT_ID  --tenant     picked in the tenant selector first (admins)
//   EXPECT_ALERT_ID   --alert      the open alert to acknowledge (default: the first open one)
//   EXPECT_SERVICE    --service    a watched service the agent page must list
//   EXPECT_COMMAND_ID --command    a finished command the agent page must list and open
//   SCREENSHOT        --screenshot where the final screenshot goes (default target/dashboard.png);
//                                  the agent page goes beside it as <name>-agent.png, and a
//                                  failure's page as <name>-failed.png
//   CHROMIUM          --chromium   the browser (default /usr/bin/chromium)
//   DASHBOARD_TIMEOUT_SECS --timeout  how long to wait for each expectation (default 120)
//
// It also opens a `#key=` link in the signed-in tab and declines the confirmation: the
// session must stay as it was. Besides what is asked above, it fails on: a JavaScript error in the page, any request
// to another origin (the dashboard loads nothing from elsewhere), an API request without
// `Authorization: Bearer`, and any API answer of 400 or more (a contract mismatch),
// each named with its method, path and status.

import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

function settings() {
  const names = {
    url: 'DASHBOARD_URL',
    key: 'DASHBOARD_API_KEY',
    agent: 'EXPECT_AGENT_ID',
    tenant: 'EXPECT_TENANT_ID',
    alert: 'EXPECT_ALERT_ID',
    service: 'EXPECT_SERVICE',
    command: 'EXPECT_COMMAND_ID',
    screenshot: 'SCREENSHOT',
    chromium: 'CHROMIUM',
    timeout: 'DASHBOARD_TIMEOUT_SECS',
  };
  const out = {};
  for (const [k, env] of Object.entries(names)) out[k] = process.env[env] || '';
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    const m = /^--([a-z]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in names)) fail(`unknown argument ${argv[i]}; known: ${Object.keys(names).map((n) => `--${n}`).join(' ')}`);
    out[m[1]] = m[2] ?? argv[++i] ?? '';
  }
  for (const k of ['url', 'key', 'agent']) {
    if (!out[k]) fail(`${names[k]} (or --${k}) is required`);
  }
  out.screenshot ||= 'target/dashboard.png';
  out.chromium ||= '/usr/bin/chromium';
  out.timeoutMs = 1000 * (Number(out.timeout) || 120);
  return out;
}

function fail(message) {
  console.error(`dashboard check FAILED: ${message}`);
  process.exit(1);
}

const cfg = settings();
const origin = new URL(cfg.url).origin;
const problems = []; // page errors, foreign requests, API errors: fail at the end
const apiErrors = [];
let step = 'starting';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` (truthy = done) until the expectation's deadline; fails naming `what`. */
async function waitUntil(what, check) {
  const deadline = Date.now() + cfg.timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`expected ${what} within ${cfg.timeoutMs / 1000} s${last ? ` (last error: ${last.message.split('\n')[0]})` : ''}`);
    }
    await sleep(250);
  }
}

const tid = (id) => `[data-testid="${id}"]`;
const css = (s) => s.replace(/["\\]/g, '\\$&');

async function visible(page, selector, what) {
  try {
    await page.locator(selector).first().waitFor({ state: 'visible', timeout: cfg.timeoutMs });
  } catch (e) {
    throw new Error(`expected to see ${what} (${selector}) within ${cfg.timeoutMs / 1000} s`);
  }
  return page.locator(selector).first();
}

async function textOf(page, selector) {
  const l = page.locator(selector).first();
  return (await l.count()) ? (await l.innerText()).trim() : null;
}

/** What the page shows as errors (the banner and each section's error line). */
async function shownErrors(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid$="-error"], [data-testid="error-banner"]')]
    .filter((e) => !e.hidden && e.textContent.trim())
    .map((e) => `${e.dataset.testid}: ${e.textContent.trim()}`));
}

function watch(page, label) {
  page.on('pageerror', (e) => problems.push(`${label}: JavaScript error in the page: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`${label}: console error: ${m.text()}`);
  });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol === 'data:' || u.protocol === 'about:') return;
    if (u.origin !== origin) {
      problems.push(`${label}: request to another origin: ${r.method()} ${r.url()}`);
      return;
    }
    if (u.pathname.startsWith('/api/') && !/^Bearer \S+/.test(r.headers().authorization || '')) {
      problems.push(`${label}: ${r.method()} ${u.pathname} was sent without Authorization: Bearer`);
    }
  });
  page.on('response', (r) => {
    const u = new URL(r.url());
    if (u.origin === origin && u.pathname.startsWith('/api/') && r.status() >= 400) {
      apiErrors.push(`${r.request().method()} ${u.pathname}${u.search} -> ${r.status()}`);
    }
  });
}

async function main() {
  const shotDir = path.dirname(cfg.screenshot);
  mkdirSync(shotDir, { recursive: true });
  const base = path.basename(cfg.screenshot, path.extname(cfg.screenshot));
  const beside = (suffix) => path.join(shotDir, `${base}-${suffix}.png`);
  rmSync(beside('failed'), { force: true }); // a failure's page from an earlier run

  step = `launching ${cfg.chromium}`;
  const browser = await chromium.launch({
    executablePath: cfg.chromium,
    headless: true,
    // Root in a container: no user namespaces for the sandbox.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  // Nothing but the dashboard's own origin may load.
  await context.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.protocol === 'data:' || u.origin === origin) return route.continue();
    return route.abort('blockedbyclient');
  });
  const page = await context.newPage();
  watch(page, 'page');
  try {
    step = 'signing in';
    await page.goto(cfg.url, { waitUntil: 'load' });
    await visible(page, tid('signin-form'), 'the sign-in form');
    await page.locator(tid('signin-key')).fill(cfg.key);
    await page.locator(tid('signin-submit')).click();
    await visible(page, tid('whoami'), 'who is signed in');
    const who = await waitUntil('the signed-in user to be named', async () => {
      const t = await textOf(page, tid('whoami'));
      return t && t.length > 0 ? t : null;
    });
    const stored = await page.evaluate(() => sessionStorage.getItem('fleetstream.apiKey'));
    if (stored !== cfg.key) throw new Error('the API key is not kept in sessionStorage');
    console.log(`signed in as ${who}`);

    if (cfg.tenant) {
      step = `selecting tenant ${cfg.tenant}`;
      await waitUntil(`tenant ${cfg.tenant} in the tenant selector`, () =>
        page.locator(`${tid('tenant-select')} option[value="${css(cfg.tenant)}"]`).count());
      await page.locator(tid('tenant-select')).selectOption(cfg.tenant);
    }

    step = 'the agent table';
    const row = `${tid('agent-row')}[data-agent-id="${css(cfg.agent)}"]`;
    await visible(page, row, `agent ${cfg.agent} in the agent table`);
    const cells = await waitUntil(`agent ${cfg.agent}'s row to show its status, CPU, memory and an open alert`, async () => {
      const c = {
        status: await textOf(page, `${row} ${tid('agent-status')}`),
        cpu: await textOf(page, `${row} ${tid('agent-cpu')}`),
        mem: await textOf(page, `${row} ${tid('agent-mem')}`),
        disk: await textOf(page, `${row} ${tid('agent-disk')}`),
        seen: await textOf(page, `${row} ${tid('agent-last-seen')}`),
        alerts: await textOf(page, `${row} ${tid('agent-open-alerts')}`),
      };
      const ok = /^(online|offline|deactivated)$/.test(c.status || '')
        && /\d %$/.test(c.cpu || '') && /\d %$/.test(c.mem || '')
        && /ago|just now/.test(c.seen || '') && Number(c.alerts) >= 1;
      return ok ? c : null;
    });
    console.log(`agent row: ${JSON.stringify(cells)}`);

    step = 'the overview counters';
    await waitUntil('the overview to count at least one agent and one open alert', async () =>
      Number(await textOf(page, `${tid('count-agents-total')} .value`)) >= 1
      && Number(await textOf(page, `${tid('count-open_alerts-total')} .value`)) >= 1);

    step = 'live updates';
    const updated = async () => Number(await page.locator(tid('last-updated')).getAttribute('data-updated-at'));
    const first = await waitUntil('a "last updated" time', updated);
    await waitUntil('the page to refresh itself (a newer "last updated" time, without a reload)', async () => (await updated()) > first);

    step = 'the agent page';
    await page.locator(`${row} ${tid('agent-link')}`).click();
    await visible(page, `${tid('agent-view')}[data-agent-id="${css(cfg.agent)}"]`, "the agent's page");
    await waitUntil('the agent page to name the host', async () => {
      const t = await textOf(page, tid('agent-name'));
      return t && t !== '\u2014';
    });
    const cpuChart = `${tid('chart')}[data-metric="cpu.percent"]`;
    await waitUntil('a CPU chart with samples', async () =>
      Number(await page.locator(cpuChart).first().getAttribute('data-points')) >= 1
      && (await page.locator(`${cpuChart} svg circle`).count()) >= 1);
    await waitUntil('a memory chart with samples', async () =>
      Number(await page.locator(`${tid('chart')}[data-metric="memory.percent"]`).first().getAttribute('data-points')) >= 1);
    const service = cfg.service
      ? `${tid('service-row')}[data-service="${css(cfg.service)}"]`
      : tid('service-row');
    await visible(page, service, cfg.service ? `service ${cfg.service} on the agent page` : 'a watched service on the agent page');
    const svcState = await textOf(page, `${service} ${tid('service-state')}`);
    if (!svcState || svcState === '\u2014') throw new Error(`the service shows no state (${svcState})`);
    console.log(`service: ${await textOf(page, `${service} ${tid('service-name')}`)} ${svcState}`);

    if (cfg.command) {
      step = 'the command result';
      const crow = `${tid('command-row')}[data-command-id="${css(cfg.command)}"]`;
      await visible(page, crow, `command ${cfg.command} on the agent page`);
      await page.locator(`${crow} ${tid('command-link')}`).click();
      await visible(page, `${tid('command-detail')}[data-command-id="${css(cfg.command)}"]`, "the command's result");
      const status = await waitUntil('the command to show a final status', async () => {
        const t = await textOf(page, tid('command-detail-status'));
        return /^(succeeded|failed|timed_out|refused)$/.test(t || '') ? t : null;
      });
      const out = await textOf(page, tid('command-stdout'));
      console.log(`command ${cfg.command}: ${status}, ${out ? out.length : 0} characters of output`);
    }
    await page.screenshot({ path: beside('agent'), fullPage: true });

    step = 'the alert list';
    await page.locator(tid('nav-alerts')).click();
    await visible(page, tid('alerts-view'), 'the alert list');
    const alertRow = cfg.alert
      ? `${tid('alert-row')}[data-alert-id="${css(cfg.alert)}"]`
      : `${tid('alert-row')}:has(${tid('alert-ack')})`;
    await visible(page, alertRow, cfg.alert ? `alert ${cfg.alert} in the list` : 'an open alert in the list');
    const alertId = await page.locator(alertRow).first().getAttribute('data-alert-id');
    const exact = `${tid('alert-row')}[data-alert-id="${css(alertId)}"]`;
    const before = await textOf(page, `${exact} ${tid('alert-status')}`);
    if (before !== 'open') throw new Error(`alert ${alertId} is ${before}, not open, before acknowledging`);

    step = `acknowledging alert ${alertId}`;
    await page.locator(`${exact} ${tid('alert-ack')}`).click();
    await waitUntil(`alert ${alertId} to show status "acknowledged"`, async () =>
      (await textOf(page, `${exact} ${tid('alert-status')}`)) === 'acknowledged');
    const by = await waitUntil(`alert ${alertId} to name who acknowledged it`, async () => {
      const t = await textOf(page, `${exact} ${tid('alert-acked-by')}`);
      return t && t !== '\u2014' ? t : null;
    });
    if (await page.locator(tid('error-banner')).isVisible()) {
      throw new Error(`the page shows an error: ${await textOf(page, tid('error-text'))}`);
    }
    console.log(`alert ${alertId} acknowledged by ${by}`);
    await page.screenshot({ path: cfg.screenshot, fullPage: true });

    step = 'signing in with a #key= link';
    const linkContext = await browser.newContext();
    const linked = await linkContext.newPage();
    watch(linked, 'link page');
    await linked.goto(`${cfg.url.replace(/#.*$/, '')}#key=${encodeURIComponent(cfg.key)}`, { waitUntil: 'load' });
    await visible(linked, tid('whoami'), 'who is signed in, after opening a #key= link');
    await visible(linked, tid('agent-table'), 'the agent table, after opening a #key= link');
    if (linked.url().includes('key=')) throw new Error(`the key stays in the address bar: ${linked.url()}`);
    await linkContext.close();

    step = 'a #key= link in a signed-in tab, declined';
    const whoBefore = await textOf(page, tid('whoami'));
    const dialogs = [];
    page.once('dialog', (d) => {
      dialogs.push(d.message());
      d.dismiss().catch(() => {});
    });
    await page.evaluate(() => {
      location.hash = '#key=fsu_someone-elses-key';
    });
    await waitUntil('the #key= link to leave the address bar', async () => !page.url().includes('key='));
    if (dialogs.length !== 1) throw new Error(`expected one confirmation before switching keys, saw ${dialogs.length}`);
    if ((await textOf(page, tid('whoami'))) !== whoBefore) throw new Error('a declined #key= link changed who is signed in');
    if ((await page.evaluate(() => sessionStorage.getItem('fleetstream.apiKey'))) !== cfg.key) {
      throw new Error('a declined #key= link replaced the stored key');
    }

    step = 'signing out';
    await page.locator(tid('sign-out')).click();
    await visible(page, tid('signin-form'), 'the sign-in form after signing out');
    if (await page.evaluate(() => sessionStorage.getItem('fleetstream.apiKey'))) {
      throw new Error('signing out left the key in sessionStorage');
    }
  } catch (e) {
    const shot = beside('failed');
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    const shown = await shownErrors(page).catch(() => []);
    await browser.close().catch(() => {});
    const extra = [
      shown.length ? `the page shows: ${shown.join(' | ')}` : null,
      apiErrors.length ? `API errors: ${apiErrors.join(', ')}` : null,
      problems.length ? problems.join('; ') : null,
      `screenshot: ${shot}`,
    ].filter(Boolean);
    fail(`${step}: ${e.message}\n  ${extra.join('\n  ')}`);
  }
  await browser.close();
  if (apiErrors.length) fail(`the API answered errors: ${apiErrors.join(', ')}`);
  if (problems.length) fail(problems.join('\n  '));
  console.log(`dashboard check passed; screenshots: ${cfg.screenshot}, ${beside('agent')}`);
}

main().catch((e) => fail(`${step}: ${e.stack || e.message}`));
