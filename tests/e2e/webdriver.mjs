// A small W3C WebDriver client (fetch only) for tauri-driver: enough to find, click, type, read attributes, run
// pointer/key actions and take screenshots.
const ELEMENT = "element-6066-11e4-a52e-4f735466cecf";

export class Session {
  constructor(base, id) {
    this.base = base;
    this.id = id;
  }

  static async start(base, application, env = {}) {
    const caps = { capabilities: { alwaysMatch: { browserName: "wry", "tauri:options": { application, env } } } };
    const res = await request(base, "POST", "/session", caps);
    return new Session(base, res.sessionId);
  }

  cmd(method, path, body) {
    return request(this.base, method, `/session/${this.id}${path}`, body);
  }

  async find(testId) {
    const v = await this.cmd("POST", "/element", { using: "css selector", value: `[data-testid="${testId}"]` });
    return v[ELEMENT];
  }

  async findAll(css) {
    const v = await this.cmd("POST", "/elements", { using: "css selector", value: css });
    return v.map((e) => e[ELEMENT]);
  }

  /** Waits until `testId` exists (and `check(element)` holds, if given). */
  async waitFor(testId, check = async () => true, timeoutMs = 30000) {
    const end = Date.now() + timeoutMs;
    let last;
    for (;;) {
      try {
        const el = await this.find(testId);
        if (await check(el)) return el;
      } catch (e) {
        last = e;
      }
      if (Date.now() > end) throw new Error(`timed out waiting for ${testId}${last ? `: ${last.message}` : ""}`);
      await sleep(100);
    }
  }

  click(el) {
    return this.cmd("POST", `/element/${el}/click`, {});
  }

  async clickId(testId) {
    return this.click(await this.find(testId));
  }

  attr(el, name) {
    return this.cmd("GET", `/element/${el}/attribute/${name}`);
  }

  async attrOf(testId, name) {
    return this.attr(await this.find(testId), name);
  }

  value(el) {
    return this.cmd("GET", `/element/${el}/property/value`);
  }

  text(el) {
    return this.cmd("GET", `/element/${el}/text`);
  }

  async type(el, text) {
    await this.cmd("POST", `/element/${el}/clear`, {});
    if (text) await this.cmd("POST", `/element/${el}/value`, { text });
  }

  /** Types `text` after what the field holds. */
  append(el, text) {
    return this.cmd("POST", `/element/${el}/value`, { text });
  }

  execute(script, args = []) {
    return this.cmd("POST", "/execute/sync", { script, args });
  }

  /** A real pointer click on `el` with Shift held. */
  shiftClick(el) {
    const SHIFT = "\uE008";
    return this.cmd("POST", "/actions", {
      actions: [
        { type: "key", id: "keyboard", actions: [{ type: "keyDown", value: SHIFT }, { type: "pause", duration: 0 }, { type: "pause", duration: 0 }, { type: "keyUp", value: SHIFT }] },
        {
          type: "pointer",
          id: "mouse",
          parameters: { pointerType: "mouse" },
          actions: [
            { type: "pointerMove", origin: { [ELEMENT]: el }, x: 0, y: 0 },
            { type: "pointerDown", button: 0 },
            { type: "pointerUp", button: 0 },
            { type: "pause", duration: 0 },
          ],
        },
      ],
    });
  }

  async screenshot() {
    return Buffer.from(await this.cmd("GET", "/screenshot"), "base64");
  }

  end() {
    return this.cmd("DELETE", "");
  }
}

async function request(base, method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${JSON.stringify(json.value ?? json)}`);
  return json.value;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
