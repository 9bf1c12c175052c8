// Two people through Beep web in two Chromium contexts with fake microphones: sign-in with the
// codes from the server's log, a profile picture, a contact seen online, a conversation, a
// push-to-talk exchange the other hears, the bite in the timeline, playing, and a reload still
// signed in. Screenshots of each step; prints {"problems":[…],"steps":{…},"interactiveMs",
// "overflow"} (overflow: the 390 px page scrolls sideways) and exits 1 on a failed step.
//
//   BEEP_TEST_CHROMIUM=… node tests/browser/walk-web.mjs <base> <server log> <wav> <picture> <out dir>

import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [base, logPath, wav, picture, out] = process.argv.slice(2);
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

async function codeFor(phone) {
  for (let i = 0; i < 100; i++) {
    const log = await readFile(logPath, "utf8");
    const code = log.split("\n").reverse().find((l) => l.includes(`destination=${phone}`))?.match(/code="(\d{6})"/)?.[1];
    if (code) return code;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no code for ${phone}`);
}

async function person(name, phone, mobile) {
  const context = await browser.newContext({
    viewport: mobile ? { width: 390, height: 844 } : { width: 1100, height: 800 },
    permissions: ["microphone"],
  });
  const page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`[${name}] ${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`[${name}] page error: ${e.message}`));
  const opened = Date.now();
  await page.goto(base);
  await page.getByRole("button", { name: "Send code" }).waitFor();
  interactiveMs ??= Date.now() - opened;
  await page.getByRole("textbox", { name: "Phone number" }).fill(phone);
  await page.getByRole("button", { name: "Send code" }).click();
  await page.getByRole("textbox", { name: "Code" }).fill(await codeFor(phone));
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByLabel("First name").fill(name);
  await page.getByLabel("Last name").fill("Tester");
  await page.getByRole("button", { name: "Save profile" }).click();
  await page.getByText("Profile saved.").waitFor();
  return page;
}

const stamp = String(Date.now()).slice(-6);
const [phoneA, phoneB] = [`+6591${stamp}`, `+6592${stamp}`];
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
await a.getByRole("listitem").filter({ hasText: "Bob Tester" }).waitFor();
await b.getByRole("button", { name: "Conversations" }).click();
await b.getByRole("button", { name: "Walk", exact: true }).click();
await b.getByRole("heading", { name: "Walk" }).waitFor();
step("conversation");

await a.getByRole("button", { name: "Join voice room" }).click();
await b.getByRole("button", { name: "Join voice room" }).click();
await a.getByRole("button", { name: "Talk" }).waitFor();
await b.getByRole("listitem").filter({ hasText: "Ada Tester" }).waitFor({ timeout: 15_000 });
// Ada holds Talk; Bob's page must show her speaking (a level from the sound it receives).
const talk = a.getByRole("button", { name: "Talk" });
await talk.hover();
await a.mouse.down();
let level = "never";
for (let i = 0; i < 30 && level !== "true"; i++) {
  await a.waitForTimeout(200);
  level = await b.locator("[data-track]").first().getAttribute("data-speaking").catch(() => "never");
}
await a.waitForTimeout(1000);
await a.mouse.up();
if (level !== "true") throw new Error("Bob never heard Ada speak");
step("talked");
await b.screenshot({ path: `${out}/walk-3-room.png` });

// The bite: in Bob's timeline once stored (silence ends it after 0.5 s; batches flush soon).
await b.getByRole("button", { name: /^Play bite of / }).first().waitFor({ timeout: 20_000 });
await b.getByRole("button", { name: /^Play bite of / }).first().click();
await b.locator("#player:not([hidden])").waitFor();
step("bite played");
await b.screenshot({ path: `${out}/walk-4-bite.png`, fullPage: true });

await b.reload();
await b.getByRole("button", { name: "Walk", exact: true }).waitFor();
step("still signed in after a reload");
const overflow = await b.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
console.log(JSON.stringify({ problems, steps, level, interactiveMs, overflow }));
await browser.close();
