// The shop as people see it: the Angular SPA (frontend/, production build) in Debian's headless
// Chromium driven by playwright-core, against a cluster of notify processes behind nginx and
// against `--role all` on its own. Screenshots of the main states go to artifacts/browser/.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { startCluster } from "./cluster.mjs";
import { eventually, hubConnections as connections, newDeployment, startServer, uniqueUser } from "./harness.mjs";

const REPO = new URL("../../", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const ARTIFACTS = new URL("../../artifacts/browser/", import.meta.url).pathname;
const SPA_BUILD = `${REPO}frontend/dist/frontend/browser/index.html`;
/** Generous: a reconnect waits for the client's jittered backoff (1 s doubling). */
const UI_TIMEOUT = 30_000;

let browser;
before(async () => {
  assert.ok(existsSync(SPA_BUILD), `no SPA build at ${SPA_BUILD}: make test builds it (frontend/test.sh)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: scripts/services.sh installs Debian's chromium`);
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});
after(() => browser?.close());

/** A user's browser profile: its tabs share localStorage, so every tab is signed in. */
async function profile(base, { phone = false } = {}) {
  const viewport = phone ? { width: 390, height: 844 } : { width: 1280, height: 900 };
  const context = await browser.newContext({ baseURL: base, viewport });
  const tabs = [];
  return {
    tabs,
    async open() {
      const page = await context.newPage();
      const tab = { page, errors: [], loads: 0 };
      page.on("console", (m) => m.type() === "error" && tab.errors.push(m.text()));
      page.on("pageerror", (e) => tab.errors.push(e.message));
      page.on("load", () => (tab.loads += 1));
      const res = await page.goto("/");
      tab.csp = res?.headers()["content-security-policy"];
      tabs.push(tab);
      return tab;
    },
    close: () => context.close(),
  };
}

const state = (tab) => tab.page.getByTestId("connection-state");
const connected = (tab) => assertText(state(tab), "connected");

async function assertText(locator, text) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout: UI_TIMEOUT });
}

async function signIn(tab, user) {
  await tab.page.getByLabel("User id").fill(user);
  await tab.page.getByRole("button", { name: "Sign in" }).click();
  await assertText(tab.page.getByTestId("signed-in-user"), user);
  await connected(tab);
}

/** Adds `productId` to the cart and places the order; resolves to its correlation id. */
async function checkout(tab, productId = "mug") {
  const { page } = tab;
  await page.locator(`[data-testid=product][data-product-id="${productId}"]`).getByTestId("add-to-cart").click();
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/api/orders") && r.request().method() === "POST"),
    page.getByTestId("checkout").click(),
  ]);
  assert.equal(response.status(), 202);
  assert.ok(response.request().headers()["idempotency-key"], "every checkout carries an Idempotency-Key");
  // From Location, not the body: Chromium keeps no body of a `Cache-Control: no-store` answer
  // for the test to read back.
  return response.headers()["location"].split("/").pop();
}

const toast = (tab, id) => tab.page.locator(`[data-testid=toast][data-correlation-id="${id}"]`);
const orderRow = (tab, id) => tab.page.locator(`[data-testid=order-row][data-correlation-id="${id}"]`);

/** The toast for order `id` is shown and its row says `status`. */
async function sees(tab, id, status = "COMPLETED") {
  await toast(tab, id).and(tab.page.locator(`[data-status=${status}]`)).waitFor({ timeout: UI_TIMEOUT });
  await orderRow(tab, id).and(tab.page.locator(`[data-status=${status}]`)).waitFor({ timeout: UI_TIMEOUT });
}

async function shot(tab, name) {
  await tab.page.screenshot({ path: `${ARTIFACTS}${name}.png`, fullPage: true });
}

/** No errors, and that under the server's Content-Security-Policy (Chromium reports each
 *  violation as a console error), so the SPA runs as the policy allows. */
function noConsoleErrors(...tabs) {
  for (const tab of tabs) {
    assert.match(tab.csp ?? "", /script-src 'self'/, "the page came with its Content-Security-Policy");
    assert.deepEqual(tab.errors, [], "the SPA logs no errors to the console");
  }
}


describe("the shop in a browser, against notify processes behind nginx", () => {
  let dep;
  let cluster;
  before(async () => {
    dep = newDeployment();
    cluster = await startCluster(dep, { notify: 2, coreArgs: ["--dev-auth", "true"], cwd: REPO });
  });
  after(async () => {
    await cluster?.stop();
    dep?.drop();
  });

  /** Opens a tab of `who` whose hub connection goes to `notifier` (nginx is pointed at it alone). */
  async function openOn(who, notifier, user) {
    const before = await connections(notifier);
    await cluster.lb.setNotify([notifier.port]);
    const tab = await who.open();
    if (user) await signIn(tab, user);
    else await connected(tab);
    await eventually("the tab's connection on its process", async () => (await connections(notifier)) === before + 1);
    return tab;
  }

  const live = () => cluster.notifiers.filter((n) => n.child.exitCode === null && n.child.signalCode === null);

  test("two tabs on two notify processes both toast the order and show it COMPLETED; another user sees nothing", async () => {
    const [a, b] = live();
    const alice = await profile(cluster.lb.base);
    const bob = await profile(cluster.lb.base);
    try {
      const tab1 = await openOn(alice, a, uniqueUser("alice"));
      // The second tab of the same user is signed in by the shared profile.
      const tab2 = await openOn(alice, b);
      const bobsTab = await openOn(bob, a, uniqueUser("bob"));
      await cluster.lb.setNotify([a.port, b.port]);

      const id = await checkout(tab1, "mug");
      await sees(tab1, id);
      await sees(tab2, id);
      assert.match(await orderRow(tab2, id).getByTestId("order-id").textContent(), /^CS-\d{6}$/);
      await shot(tab1, "cluster-tab1-toast");
      await shot(tab2, "cluster-tab2-toast");

      // Bob's own order reaches him; Alice's never did, in the toasts or the list.
      const bobs = await checkout(bobsTab, "filter");
      await sees(bobsTab, bobs);
      assert.equal(await toast(bobsTab, id).count(), 0, "no toast of another user's order");
      assert.equal(await orderRow(bobsTab, id).count(), 0, "no row of another user's order");
      assert.equal(await bobsTab.page.getByTestId("toast").count(), 1);
      assert.equal(await bobsTab.page.getByTestId("order-row").count(), 1);
      await shot(bobsTab, "cluster-other-user");
      noConsoleErrors(tab1, tab2, bobsTab);
    } finally {
      await alice.close();
      await bob.close();
    }
  });

  /**
   * Tab 1 on one process, tab 2 on another; `leave(process)` takes tab 2's process away while
   * nginx still points at it alone, so tab 2 can reach no live process. An order placed in that
   * gap must reach tab 2 once nginx points at the survivor: COMPLETED, without a page load.
   */
  async function awayAndBack(leave, shots) {
    if (live().length < 2) await cluster.addNotify();
    const [survivor, leaving] = live();
    const alice = await profile(cluster.lb.base);
    try {
      const tab1 = await openOn(alice, survivor, uniqueUser("alice"));
      const tab2 = await openOn(alice, leaving);
      await tab2.page.evaluate(() => (window.__contosoMarker = "the same page"));
      const loads = tab2.loads;
      await leave(leaving);
      await assertText(state(tab2), "reconnecting");
      if (shots) await shot(tab2, "cluster-tab2-reconnecting");

      const id = await checkout(tab1, "espresso");
      await sees(tab1, id);
      assert.equal(await toast(tab2, id).count(), 0, "tab 2 was away when the order completed");
      assert.equal(await state(tab2).textContent(), "reconnecting", "the order completed inside the gap");

      await cluster.lb.setNotify([survivor.port]);
      await connected(tab2);
      await sees(tab2, id);
      assert.equal(tab2.loads, loads, "no page load: the tab caught up by itself");
      assert.equal(await tab2.page.evaluate(() => window.__contosoMarker), "the same page");
      if (shots) await shot(tab2, "cluster-tab2-caught-up");
      noConsoleErrors(tab1);
    } finally {
      await alice.close();
    }
  }

  test("the process of tab 2 is drained (SIGTERM): tab 2 reconnects to another process and catches up on the order placed while it was away", async () => {
    // The draining process refuses new connections (503) until it exits.
    await awayAndBack(async (leaving) => {
      await leaving.stop();
      assert.equal((await leaving.exited).code, 0, "a drained process exits 0");
    });
  });

  test("the process of tab 2 is killed: tab 2 shows reconnecting, then connected, and the order placed in the gap COMPLETED, without a reload", async () => {
    await awayAndBack((victim) => victim.kill(), true);
  });
});

describe("the shop in a browser, against --role all alone", () => {
  let dep;
  let server;
  before(async () => {
    const id = `embedded-${Date.now()}`;
    dep = { db: id, secret: `secret-${id}`, busPrefix: `t-${id}.`, channelPrefix: `t-${id}-` };
    server = await startServer(dep, { embedded: true, args: ["--dev-auth", "true"], cwd: REPO });
  });
  after(() => server?.stop());

  test("every tab of the user toasts the order, at phone width too, and another user sees nothing", async () => {
    const carol = await profile(server.base);
    const phone = await profile(server.base, { phone: true });
    const dave = await profile(server.base);
    try {
      const tab1 = await carol.open();
      const user = uniqueUser("carol");
      await signIn(tab1, user);
      const tab2 = await carol.open();
      await connected(tab2);
      const phoneTab = await phone.open();
      await signIn(phoneTab, user);
      const davesTab = await dave.open();
      await signIn(davesTab, uniqueUser("dave"));

      const id = await checkout(tab1, "kettle");
      for (const tab of [tab1, tab2, phoneTab]) await sees(tab, id);
      const failed = await checkout(phoneTab, "discontinued");
      for (const tab of [tab1, tab2, phoneTab]) await sees(tab, failed, "FAILED");
      await shot(tab1, "embedded-tab1");
      await shot(phoneTab, "embedded-phone");

      const daves = await checkout(davesTab, "mug");
      await sees(davesTab, daves);
      assert.equal(await davesTab.page.getByTestId("order-row").count(), 1, "only Dave's own order");
      assert.equal(await davesTab.page.getByTestId("toast").count(), 1, "only Dave's own toast");
      // Nothing but the process itself: no connection to PostgreSQL, Redis or RabbitMQ.
      const peers = spawnSync("ss", ["-Htnp", "state", "established"], { encoding: "utf8" })
        .stdout.split("\n")
        .filter((line) => line.includes(`pid=${server.child.pid},`))
        .map((line) => line.trim().split(/\s+/)[3]);
      assert.ok(peers.length > 0, "ss sees the tabs' connections");
      for (const port of [5432, 6379, 5672]) {
        assert.ok(!peers.some((peer) => peer.endsWith(`:${port}`)), `a connection to port ${port}: ${peers}`);
      }
      // The phone layout never scrolls sideways.
      const overflow = await phoneTab.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
      noConsoleErrors(tab1, tab2, phoneTab, davesTab);
    } finally {
      await Promise.all([carol.close(), phone.close(), dave.close()]);
    }
  });

  test("the shop works with the keyboard alone", async () => {
    const erin = await profile(server.base);
    try {
      const tab = await erin.open();
      const { page } = tab;
      const focused = () => page.evaluate(() => document.activeElement?.getAttribute("aria-label") ?? document.activeElement?.textContent?.trim() ?? "");
      // Tab until the element named `name` has focus (bounded), then press `key` on it.
      const tabTo = async (name, key = "Enter") => {
        for (let i = 0; i < 40 && !(await focused()).startsWith(name); i += 1) await page.keyboard.press("Tab");
        assert.ok((await focused()).startsWith(name), `Tab never reached "${name}"`);
        await page.keyboard.press(key);
      };
      await page.getByLabel("User id").focus();
      await page.keyboard.press("ControlOrMeta+a");
      await page.keyboard.type(uniqueUser("erin"));
      await page.keyboard.press("Enter");
      await connected(tab);
      await tabTo("Add to cart: Contoso mug");
      await tabTo("Place order");
      // Focus moves to the outcome, so a screen reader announces it and Tab continues from there.
      await assertText(page.getByTestId("checkout-result"), "Order accepted");
      assert.equal(await page.evaluate(() => document.activeElement?.getAttribute("data-testid")), "checkout-result");
      const row = page.getByTestId("order-row").first();
      await row.and(page.locator("[data-status=COMPLETED]")).waitFor({ timeout: UI_TIMEOUT });
      await page.getByTestId("toast").first().waitFor({ timeout: UI_TIMEOUT });
      await tabTo("Dismiss notification");
      await page.getByTestId("toast").first().waitFor({ state: "detached", timeout: UI_TIMEOUT });
      noConsoleErrors(tab);
    } finally {
      await erin.close();
    }
  });
});
