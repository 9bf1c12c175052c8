// A first walk through Beep web in Chromium: sign in with the code from the server's log,
// fill the profile, create a conversation. Prints console problems; saves screenshots.
//
//   BEEP_TEST_CHROMIUM=/usr/bin/chromium node tests/browser/smoke-web.mjs <base url> <server log> <out dir>

import { readFile } from "node:fs/promises";
import { chromium } from "playwright-core";

const [base, logPath, out] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: process.env.BEEP_TEST_CHROMIUM, args: ["--no-sandbox"] });
const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
const page = await context.newPage();
const problems = [];
page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") problems.push(`${m.type()}: ${m.text()}`); });
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
const started = Date.now();
await page.goto(base);
await page.getByRole("button", { name: "Send code" }).waitFor();
console.log(`interactive after ${Date.now() - started} ms`);
await page.screenshot({ path: `${out}/1-sign-in.png`, fullPage: true });
const phone = `+6591${String(Date.now()).slice(-6)}`;
await page.getByRole("textbox", { name: "Phone number" }).fill(phone);
await page.getByRole("button", { name: "Send code" }).click();
await page.getByRole("textbox", { name: "Code" }).waitFor();
let code = null;
for (let i = 0; i < 50 && !code; i++) {
  const log = await readFile(logPath, "utf8");
  code = log.split("\n").reverse().find((l) => l.includes(`destination=${phone}`))?.match(/code="(\d{6})"/)?.[1];
  if (!code) await new Promise((r) => setTimeout(r, 100));
}
await page.getByRole("textbox", { name: "Code" }).fill(code);
await page.getByRole("button", { name: "Sign in" }).click();
await page.getByRole("button", { name: "Save profile" }).waitFor();
await page.getByLabel("First name").fill("Ada");
await page.getByLabel("Last name").fill("Lovelace");
await page.getByRole("button", { name: "Save profile" }).click();
await page.getByText("Profile saved.").waitFor();
await page.screenshot({ path: `${out}/2-profile.png`, fullPage: true });
await page.getByRole("button", { name: "Conversations" }).click();
await page.getByRole("button", { name: "New conversation" }).click();
await page.getByRole("textbox", { name: "Title" }).fill("Tea");
await page.getByRole("button", { name: "Create" }).click();
await page.getByRole("heading", { name: "Tea" }).waitFor();
await page.reload();
await page.getByRole("button", { name: "Conversations" }).click();
await page.getByRole("button", { name: "Tea", exact: true }).waitFor();
await page.screenshot({ path: `${out}/3-conversation.png`, fullPage: true });
const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
console.log(JSON.stringify({ problems, overflow }));
await browser.close();
