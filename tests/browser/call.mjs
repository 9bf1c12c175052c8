// Puts two Chromium pages in a call through the app's SFU and reports what each one heard.
//
//   node tests/browser/call.mjs <base url> <token A> <token B> <conversation>
//
// Chromium comes from BEEP_TEST_CHROMIUM. Prints one line of JSON to stdout,
// {"a":{...},"b":{...}} as call.html's inboundAudio() sees it, and exits 0 once each page has
// decoded sound (not only packets of silence) from a remote track, 1 if that does not happen
// within BEEP_TEST_CALL_TIMEOUT_MS (default 30 s), 2 on a usage or launch error. Diagnostics,
// and each page's log, go to stderr.

import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [base, tokenA, tokenB, conversation] = process.argv.slice(2);
const executablePath = process.env.BEEP_TEST_CHROMIUM;
if (!base || !tokenA || !tokenB || !conversation || !executablePath) {
  console.error("usage: BEEP_TEST_CHROMIUM=<chromium> node call.mjs <base> <tokenA> <tokenB> <conversation>");
  process.exit(2);
}
const timeoutMs = Number(process.env.BEEP_TEST_CALL_TIMEOUT_MS || 30_000);
// The page is served on the app's own origin, so its fetch and WebSocket are same-origin.
const pageUrl = new URL("/__browser_test/call.html", base);
const isPage = (url) => url.origin === pageUrl.origin && url.pathname === pageUrl.pathname;
const pageHtml = await readFile(new URL("./call.html", import.meta.url), "utf8");

const browser = await chromium.launch({
  executablePath,
  timeout: 30_000,
  args: [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
  ],
});

async function open(name, token) {
  // A context each: two independent clients, as two devices would be. A page Playwright
  // fulfils has no server address, so Chrome counts it as public and would block its
  // WebSocket to 127.0.0.1 (Local Network Access) without this permission.
  const context = await browser.newContext({ permissions: ["local-network-access"] });
  const page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error" || message.type() === "warning") {
      console.error(`[${name}] ${message.type()}: ${message.text()}`);
    }
  });
  page.on("pageerror", (err) => console.error(`[${name}] page error: ${err.message}`));
  await page.route(isPage, (route) =>
    route.fulfill({ status: 200, contentType: "text/html", body: pageHtml }),
  );
  const query = new URLSearchParams({ token, conversation });
  await page.goto(`${pageUrl}?${query}`);
  await page.waitForFunction(() => typeof window.inboundAudio === "function");
  return page;
}

const heard = (page) => page.evaluate(() => window.inboundAudio());
// Chrome's fake microphone beeps; total audio energy stays near 1e-10 for silence.
const AUDIBLE = 1e-3;
const hearsSomeone = (report) =>
  report.inbound.some((stream) => stream.packets > 0 && stream.energy > AUDIBLE);

let status = 1;
let report = {};
try {
  const pages = { a: await open("a", tokenA), b: await open("b", tokenB) };
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    report = { a: await heard(pages.a), b: await heard(pages.b) };
    if (hearsSomeone(report.a) && hearsSomeone(report.b)) {
      status = 0;
      break;
    }
    if (Date.now() > deadline) {
      console.error(`timed out after ${timeoutMs} ms: the pages did not both hear sound`);
      break;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  for (const [name, page] of Object.entries(pages)) {
    const log = await page.evaluate(() => window.call.log);
    console.error(`[${name}] page log:\n  ${log.join("\n  ")}`);
  }
} catch (err) {
  console.error(`driver: ${err.stack || err}`);
  status = 2;
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(status);
