// A small W3C WebDriver client (https://www.w3.org/TR/webdriver2/) for the browser suites:
// starts Debian's chromedriver on a free loopback port, opens one headless Chromium session,
// and offers the few commands the suites use. Every wait is bounded.

import { spawn } from "node:child_process";

const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class WebDriverError extends Error {}

/** Starts chromedriver and a headless Chromium session; `close()` ends both. */
export async function launch({
  chromedriver = process.env.CHROMEDRIVER ?? "/usr/bin/chromedriver",
  chromium = process.env.CHROMIUM ?? "/usr/bin/chromium",
  width = 1280,
  height = 900,
} = {}) {
  // Its own process group, so that the driver and the browser it starts end together.
  const driver = spawn(chromedriver, ["--port=0"], { stdio: ["ignore", "pipe", "inherit"], detached: true });
  const port = await new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new WebDriverError(`chromedriver did not start: ${seen}`)), 15_000);
    driver.stdout.on("data", (chunk) => {
      seen += chunk;
      const m = /started successfully on port (\d+)/.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    driver.on("exit", (code) => reject(new WebDriverError(`chromedriver exited (${code}): ${seen}`)));
    driver.on("error", (e) => reject(new WebDriverError(`chromedriver could not start (${chromedriver}): ${e.message}`)));
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    const created = await command(base, "POST", "/session", {
      capabilities: {
        alwaysMatch: {
          browserName: "chrome",
          // The stack's gateway certificate is signed by a CA made for the test.
          acceptInsecureCerts: true,
          "goog:loggingPrefs": { browser: "ALL" },
          "goog:chromeOptions": {
            binary: chromium,
            args: [
              "--headless=new",
              "--no-sandbox", // the suites run as root on CI machines
              "--disable-gpu",
              "--disable-dev-shm-usage",
              `--window-size=${width},${height}`,
              // Nothing but the page under test on the network.
              "--disable-background-networking",
              "--disable-component-update",
              "--disable-default-apps",
              "--disable-sync",
              "--no-first-run",
              "--no-default-browser-check",
            ],
          },
        },
      },
    });
    return new Session(base, created.sessionId, driver);
  } catch (e) {
    killGroup(driver, "SIGKILL");
    throw e;
  }
}

/** Signals chromedriver's process group (the driver and the browser). */
export function killGroup(driver, signal) {
  try {
    process.kill(-driver.pid, signal);
  } catch {
    // Already gone.
  }
}

async function command(base, method, path, body) {
  const response = await fetch(base + path, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  const answer = await response.json();
  if (!response.ok) {
    const v = answer.value ?? {};
    throw new WebDriverError(`${method} ${path}: ${v.error ?? response.status}: ${v.message ?? ""}`);
  }
  return answer.value;
}

export class Session {
  constructor(base, id, driver) {
    this.base = base;
    this.id = id;
    this.driver = driver;
  }

  cmd(method, path, body) {
    return command(this.base, method, `/session/${this.id}${path}`, body);
  }

  go(url) {
    return this.cmd("POST", "/url", { url });
  }

  url() {
    return this.cmd("GET", "/url");
  }

  /** The elements matching a CSS selector (maybe none). */
  async all(css) {
    const found = await this.cmd("POST", "/elements", { using: "css selector", value: css });
    return found.map((e) => new Element(this, e[ELEMENT], css));
  }

  /** The first element matching `css`, waiting up to `ms` for it. */
  async find(css, ms = 10_000) {
    return this.until(`an element ${css}`, ms, async () => (await this.all(css))[0]);
  }

  /** Waits for `probe` to return something truthy, retrying every 100 ms for up to `ms`. */
  async until(what, ms, probe) {
    const end = Date.now() + ms;
    let last;
    for (;;) {
      try {
        const value = await probe();
        if (value) return value;
      } catch (e) {
        if (!(e instanceof WebDriverError)) throw e;
        last = e;
      }
      if (Date.now() > end) {
        throw new WebDriverError(`waited ${ms} ms for ${what}${last ? ` (${last.message})` : ""}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  run(script, ...args) {
    return this.cmd("POST", "/execute/sync", { script, args });
  }

  runAsync(script, ...args) {
    return this.cmd("POST", "/execute/async", { script, args });
  }

  /** A PNG of the viewport. */
  async screenshot() {
    return Buffer.from(await this.cmd("GET", "/screenshot"), "base64");
  }

  /** The browser's console entries since the last call (chromedriver's log). */
  consoleLog() {
    return this.cmd("POST", "/se/log", { type: "browser" });
  }

  async close() {
    try {
      await this.cmd("DELETE", "");
    } finally {
      killGroup(this.driver, "SIGTERM");
    }
  }
}

export class Element {
  constructor(session, id, css) {
    this.session = session;
    this.id = id;
    this.css = css;
  }

  click() {
    return this.session.cmd("POST", `/element/${this.id}/click`, {});
  }

  type(text) {
    return this.session.cmd("POST", `/element/${this.id}/value`, { text });
  }

  clear() {
    return this.session.cmd("POST", `/element/${this.id}/clear`, {});
  }

  text() {
    return this.session.cmd("GET", `/element/${this.id}/text`);
  }

  attribute(name) {
    return this.session.cmd("GET", `/element/${this.id}/attribute/${name}`);
  }
}
