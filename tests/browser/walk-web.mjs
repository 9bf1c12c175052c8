// Two people through Beep web in two Chromium contexts with fake microphones: sign-in with
// codes the test reads from the server, a profile picture, a contact seen online, a
// conversation, a push-to-talk exchange each way (mouse, then space bar) the other hears, the
// bite in the timeline, playing, (given a word) its transcript found by search and played from
// the match, a reload still signed in, a device revoked, Bob removed and his page following,
// and signing out. A wrong code is tried once, and named on the page. Screenshots
// of each step. Asks for each code by printing {"codeFor": phone} and reading the code as a
// line on stdin. Ends by printing {"problems":[…],"steps":{…},"interactiveMs","overflow"}
// (overflow: the 390 px page scrolls sideways); exits 1 on a
// failed step. Run by tests/api/web.rs:
//
//   node walk-web.mjs <base> <phone A> <phone B> <A's other device> <wav> <picture> <out dir> [<spoken word>]
//
// <A's other device>: the client id of a session A already has (the test signs it in).

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const [base, phoneA, phoneB, otherDevice, wav, picture, out, word] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.BEEP_TEST_CHROMIUM,
  args: [
    "--no-sandbox",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    `--use-file-for-fake-audio-capture=${wav}`,
    "--autoplay-policy=no-user-gesture-required",
  ],
});
const problems = [];
let interactiveMs = null;
const steps = {};
const started = Date.now();
const step = (name) => { steps[name] = Date.now() - started; };

const replies = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function codeFor(phone) {
  console.log(JSON.stringify({ codeFor: phone }));
  const { value, done } = await replies.next();
  if (done) throw new Error(`no code for ${phone}`);
  return value.trim();
}

async function person(name, phone, mobile) {
  const context = await browser.newContext({
    viewport: mobile ? { width: 390, height: 844 } : { width: 1100, height: 800 },
    permissions: ["microphone"],
  });
  // The page's peer connections, kept where the walk can read their statistics.
  await context.addInitScript(() => {
    const Original = window.RTCPeerConnection;
    window.walkConnections = [];
    window.RTCPeerConnection = class extends Original {
      constructor(...args) {
        super(...args);
        window.walkConnections.push(this);
      }
    };
  });
  const page = await context.newPage();
  // Chromium reports every refused request on the console; the wrong code's 401 is expected.
  let refusalsExpected = 0;
  page.on("console", (m) => {
    if (refusalsExpected > 0 && m.text().includes("status of 401")) refusalsExpected -= 1;
    else if (m.type() === "error" || m.type() === "warning") problems.push(`[${name}] ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`[${name}] page error: ${e.message}`));
  const opened = Date.now();
  await page.goto(base);
  await page.getByRole("button", { name: "Send code" }).waitFor();
  interactiveMs ??= Date.now() - opened;
  await page.getByRole("textbox", { name: "Phone number" }).fill(phone);
  await page.getByRole("button", { name: "Send code" }).click();
  const code = page.getByRole("textbox", { name: "Code" });
  await code.waitFor();
  const right = await codeFor(phone);
  if (mobile) {
    // One wrong code first: the page says so in words.
    const wrong = right.slice(0, 5) + String((Number(right[5]) + 1) % 10);
    await code.fill(wrong);
    refusalsExpected = 1;
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "That code is not right" }).waitFor();
    for (let i = 0; i < 20 && refusalsExpected > 0; i++) await page.waitForTimeout(100);
    if (refusalsExpected !== 0) throw new Error("the wrong code's 401 never reached the console");
  }
  await code.fill(right);
  await page.getByRole("button", { name: "Sign in" }).click();
  // A new user lands on their profile, a known one on conversations: both can go there.
  await page.getByRole("button", { name: "Profile", exact: true }).click();
  await page.getByLabel("First name").fill(name);
  await page.getByLabel("Last name").fill("Tester");
  await page.getByRole("button", { name: "Save profile" }).click();
  await page.getByText("Profile saved.").waitFor();
  return page;
}

const a = await person("Ada", phoneA, false);
const b = await person("Bob", phoneB, true);
step("signed in");

await a.getByLabel("Picture", { exact: true }).setInputFiles(picture);
await a.getByRole("button", { name: "Save profile" }).click();
await a.getByRole("img", { name: "Your picture" }).waitFor();
await a.screenshot({ path: `${out}/walk-1-profile.png` });
step("picture");

// Each adds the other, so presence is visible both ways; Bob looks at Ada.
await a.getByRole("button", { name: "Contacts" }).click();
await a.getByLabel("Contact's phone number").fill(phoneB);
await a.getByRole("button", { name: "Add contact" }).click();
await b.getByRole("button", { name: "Contacts" }).click();
await b.getByLabel("Contact's phone number").fill(phoneA);
await b.getByRole("button", { name: "Add contact" }).click();
await b.getByText("online").waitFor({ timeout: 15_000 });
await b.screenshot({ path: `${out}/walk-2-contact-online.png` });
step("contact online");

await a.getByRole("button", { name: "Conversations" }).click();
await a.getByRole("button", { name: "New conversation" }).click();
await a.getByRole("textbox", { name: "Title", exact: true }).fill("Walk");
await a.getByRole("button", { name: "Create" }).click();
await a.getByRole("heading", { name: "Walk" }).waitFor();
await a.getByRole("button", { name: "Add member" }).click();
await a.locator("#member-list").getByText("Bob Tester").waitFor();
await b.getByRole("button", { name: "Conversations" }).click();
await b.getByRole("button", { name: "Walk", exact: true }).click();
await b.getByRole("heading", { name: "Walk" }).waitFor();
step("conversation");

await a.getByRole("button", { name: "Join voice room" }).click();
await b.getByRole("button", { name: "Join voice room" }).click();
// Enabled once Ada is in the room (and the page has said so, above the button).
await a.locator("#talk-button:not([disabled])").waitFor();
await b.getByRole("list", { name: "In the room" }).getByText("Ada Tester").waitFor({ timeout: 15_000 });
/** Polls `listener`'s page until it shows the other speaking (a level from the sound it
 * receives), for up to 6 s: "true", or what it last showed. */
async function hears(listener) {
  let level = "never";
  for (let i = 0; i < 30 && level !== "true"; i++) {
    await listener.waitForTimeout(200);
    level = await listener.evaluate(() => document.querySelector("[data-track]")?.dataset.speaking ?? "never");
  }
  return level;
}

/** What each side's connection saw, to tell a silent sender from a lost path. */
async function silentCall(who) {
  const rtp = (page) => page.evaluate(async () => {
    const pc = window.walkConnections.at(-1);
    if (!pc) return "no connection";
    const seen = [];
    (await pc.getStats()).forEach((r) => {
      if (["inbound-rtp", "outbound-rtp", "candidate-pair"].includes(r.type)) {
        seen.push({ type: r.type, state: r.state, packets: r.packetsReceived ?? r.packetsSent, level: r.audioLevel });
      }
    });
    return seen;
  });
  return new Error(`${who}: Ada ${JSON.stringify(await rtp(a))}, Bob ${JSON.stringify(await rtp(b))}`);
}

// Ada holds Talk with the mouse; Bob's page must show her speaking.
const talk = a.getByRole("button", { name: "Talk" });
await talk.hover();
await a.mouse.down();
const level = await hears(b);
// The fake microphone loops the WAV from when the room was joined; to be searched, the bite
// must hold the whole sentence once, so Ada talks through two of its loops.
await a.waitForTimeout(word ? 8000 : 1000);
await a.mouse.up();
if (level !== "true") throw await silentCall("Bob never heard Ada speak");
// Bob holds the space bar (the keyboard's push-to-talk); Ada's page shows him speaking.
await a.getByRole("list", { name: "In the room" }).getByText("Bob Tester").waitFor({ timeout: 15_000 });
await b.keyboard.down("Space");
const keyed = await hears(a);
await b.keyboard.up("Space");
if (keyed !== "true") throw await silentCall("Ada never heard Bob speak");
step("talked");
await b.screenshot({ path: `${out}/walk-3-room.png` });

// The bite: in Bob's timeline once stored (silence ends it after 0.5 s; batches flush soon).
await b.getByRole("button", { name: /^Play bite of / }).first().waitFor({ timeout: 20_000 });
await b.getByRole("button", { name: /^Play bite of / }).first().click();
await b.locator("#player:not([hidden])").waitFor();
step("bite played");
await b.screenshot({ path: `${out}/walk-4-bite.png`, fullPage: true });

if (word) {
  // Transcribed after it is stored: Bob searches until the engine has indexed it.
  const match = b.getByRole("button", { name: /^Play the bite of .* from the match$/ });
  await b.getByRole("textbox", { name: "Search" }).fill(word);
  for (let i = 0; i < 120 && !(await match.count()); i++) {
    await b.getByRole("textbox", { name: "Search" }).press("Enter");
    await b.waitForTimeout(500);
  }
  // Played from the matched word: a new recording, from the match's offset.
  const before = await b.evaluate(() => document.querySelector("#player").src);
  const offset = Number(await match.first().getAttribute("data-offset-ms")) / 1000;
  if (!Number.isFinite(offset)) throw new Error("the match carries no offset");
  const marked = await b.locator("#search-results mark").first().textContent();
  if (!marked.toLowerCase().includes(word)) throw new Error(`the match marks ${marked}, not ${word}`);
  await match.first().click();
  await b.waitForFunction((old) => document.querySelector("#player").src !== old, before);
  const at = await b.evaluate(() => document.querySelector("#player").currentTime);
  if (Math.abs(at - offset) > 0.5) throw new Error(`played from ${at} s, the match is at ${offset} s`);
  step("found by search");
  await b.screenshot({ path: `${out}/walk-5-search.png`, fullPage: true });
}

await b.reload();
await b.getByRole("button", { name: "Walk", exact: true }).waitFor();
step("still signed in after a reload");
const overflow = await b.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);

// Ada's devices: this browser, and the one the test signed in before the walk; she revokes
// that one, then signs out here.
await a.getByRole("button", { name: "Sessions" }).click();
await a.getByText("(this browser)").waitFor();
await a.getByRole("button", { name: `Revoke ${otherDevice}` }).click();
await a.getByRole("button", { name: `Revoke ${otherDevice}` }).waitFor({ state: "detached" });
await a.screenshot({ path: `${out}/walk-6-sessions.png` });
step("a device revoked");

// Ada removes Bob: his open conversation closes by itself, with no error shown. Once his page
// has loaded it and its member stream answers, so the removal is what it follows.
await a.getByRole("button", { name: "Conversations" }).click();
const memberStream = b.waitForResponse((r) => r.url().includes("/member?token="));
await b.getByRole("button", { name: "Walk", exact: true }).click();
await b.getByRole("heading", { name: "Walk" }).waitFor();
await b.locator("#member-list").getByText("Ada Tester").waitFor();
await memberStream;
await a.getByRole("button", { name: "Remove Bob Tester" }).click();
await b.getByRole("heading", { name: "Walk" }).waitFor({ state: "hidden" });
await b.getByRole("button", { name: "Walk", exact: true }).waitFor({ state: "detached" });
await b.waitForTimeout(500);
const shown = await b.evaluate(() => document.querySelector("#problem").hidden ? null : document.querySelector("#problem").textContent);
if (shown) throw new Error(`Bob's page, removed, says: ${shown}`);
step("removed, and the page followed");

await a.getByRole("button", { name: "Sign out" }).click();
await a.getByRole("textbox", { name: "Phone number" }).waitFor();
await a.reload();
await a.getByRole("textbox", { name: "Phone number" }).waitFor();
step("signed out, still after a reload");
console.log(JSON.stringify({ problems, steps, level, interactiveMs, overflow }));
await browser.close();
process.exit(0);
