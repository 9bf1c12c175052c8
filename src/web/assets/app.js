// Beep web: the whole client, one ES module, no dependencies. It speaks the same API as any
// other client (README "The API"), with the tokens kept in localStorage.

const $ = (selector) => document.querySelector(selector);
const STORE = "beep.session";
/** Pings while the page is open, as the Flutter client does. */
const PING_EVERY_MS = 20_000;

// ---- errors in words --------------------------------------------------------------------

const WORDS = {
  invalid_phone_number: "That phone number does not look right. Start it with + and the country code.",
  invalid_email: "That email address does not look right.",
  invalid_code: "That code is not right. Check it and try again.",
  code_expired: "That code has expired. Ask for a new one.",
  too_many_attempts: "Too many wrong codes. Ask for a new one.",
  rate_limited: "Too many tries. Wait a little and try again.",
  username_taken: "Someone already has that username.",
  invalid_profile: "Some profile fields are not valid.",
  already_a_contact: "They are already in your contacts.",
  already_a_member: "They are already in this conversation.",
  user_not_found: "Nobody with that phone number.",
  not_a_member: "You are not in this conversation any more.",
  conversation_not_found: "This conversation no longer exists.",
  room_full: "The voice room is full.",
  payload_too_large: "That file is too large.",
  unsupported_picture: "That is not a picture Beep can use (JPEG, PNG, WebP or GIF).",
  invalid_picture: "That picture could not be read.",
  picture_too_large: "That picture is too large.",
  session_ended: "You were signed out.",
  token_revoked: "You were signed out.",
  transcript_pending: "The transcript is not ready yet.",
  transcript_not_found: "This bite has no transcript.",
  transcript_failed: "This bite could not be transcribed.",
  too_many_streams: "Too many open pages. Close some and reload.",
  service_unavailable: "The server is busy or restarting. Try again soon.",
};

class Problem extends Error {
  constructor(code, message) {
    super(WORDS[code] || message || "Something went wrong. Try again.");
    this.code = code;
  }
}

function say(text) {
  $("#status").textContent = text || "";
}

function complain(err) {
  const box = $("#problem");
  box.textContent = err instanceof Problem ? err.message : "Something went wrong. Try again.";
  box.hidden = false;
  if (!(err instanceof Problem)) console.info("beep:", err);
}

function clearProblem() {
  $("#problem").hidden = true;
}

// ---- session ------------------------------------------------------------------------------

let session = JSON.parse(localStorage.getItem(STORE) || "null");
let refreshing = null;

function keep(pair) {
  session = {
    access: pair.access_token,
    refresh: pair.refresh_token,
    user: pair.user_id,
    // Refreshed early: background tabs run timers about once a minute.
    until: Date.now() + (pair.expires_in - 180) * 1000,
  };
  localStorage.setItem(STORE, JSON.stringify(session));
}

function forget() {
  session = null;
  localStorage.removeItem(STORE);
}

function clientId() {
  let id = localStorage.getItem("beep.client");
  if (!id) {
    // Not crypto.randomUUID: it exists only on secure pages, and Beep may be tried over plain HTTP.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = `web-${Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("")}`;
    localStorage.setItem("beep.client", id);
  }
  return id;
}

/** Another tab of this browser signed in, out, or refreshed: use what it stored. */
function adoptStored() {
  session = JSON.parse(localStorage.getItem(STORE) || "null");
}

window.addEventListener("storage", (event) => {
  if (event.key !== STORE) return;
  const wasSignedIn = Boolean(session);
  adoptStored();
  if (wasSignedIn && !session) signedOut();
});

/** A new token pair. A refresh token works once, and presenting a used one ends the session,
 * so tabs take turns (a lock) and a tab first looks whether another has just refreshed. */
async function refresh() {
  const stale = session?.refresh;
  const exchange = async () => {
    adoptStored();
    if (!session) throw new Problem("session_ended");
    if (session.refresh !== stale && Date.now() < session.until) return;
    const answer = await postAnonymous("/login/refresh", { refresh_token: session.refresh });
    if (answer.status === 401 || answer.status === 403) {
      signedOut();
      throw await problemOf(answer);
    }
    // Busy or rate limited: the refresh token is still good, try again later.
    if (!answer.ok) throw await problemOf(answer);
    keep(await answer.json());
  };
  refreshing ||= (navigator.locks ? navigator.locks.request("beep.refresh", exchange) : exchange())
    .finally(() => {
      refreshing = null;
    });
  return refreshing;
}

async function token() {
  if (!session) throw new Problem("session_ended");
  if (Date.now() > session.until) await refresh();
  return session.access;
}

/** A JSON post made before there is a token (sign-in, refresh). */
function postAnonymous(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
}

async function problemOf(answer) {
  try {
    const body = await answer.json();
    return new Problem(body.error?.code, body.error?.message);
  } catch {
    return new Problem(answer.status >= 500 ? "service_unavailable" : undefined);
  }
}

/** Calls the API as the signed-in user; JSON in and out, or the raw response with `raw`. */
async function api(path, { method = "GET", body, form, raw } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const headers = { Authorization: `Bearer ${await token()}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const answer = await fetch(path, {
      method,
      headers,
      body: form ?? (body === undefined ? undefined : JSON.stringify(body)),
    });
    if (answer.status === 401 && attempt === 0 && session) {
      await refresh();
      continue;
    }
    if (answer.status === 401) {
      signedOut();
      throw await problemOf(answer);
    }
    if (!answer.ok) throw await problemOf(answer);
    if (raw) return answer;
    const text = await answer.text();
    return text ? JSON.parse(text) : null;
  }
}

/** For loaders called again before they answer: `const stale = loads();` at the start of a
 * call, and after each wait `stale()` says whether a later call has begun (its answer wins). */
function latestOnly() {
  let calls = 0;
  return () => {
    const call = ++calls;
    return () => call !== calls;
  };
}

/** A server-sent event stream (`handlers`: event name to function of its JSON) that
 * reconnects with a fresh token, backing off, and gives up when the server refuses it.
 * `reopened(failedAt)` runs after a reconnection, to fetch what was missed while it was down. */
function stream(path, handlers, reopened = null) {
  let source = null;
  let closed = false;
  let failedAt = null;
  let wait = 1000;
  const open = async () => {
    if (closed || !session) return;
    const key = await token();
    if (closed) return;
    const separator = path.includes("?") ? "&" : "?";
    source = new EventSource(`${path}${separator}token=${encodeURIComponent(key)}`);
    source.onopen = () => {
      wait = 1000;
      if (failedAt !== null) reopened?.(failedAt)?.catch(complain);
      failedAt = null;
    };
    for (const [name, handle] of Object.entries(handlers)) {
      source.addEventListener(name, (message) => {
        try {
          handle(JSON.parse(message.data));
        } catch (err) {
          console.info("beep: unreadable event", err);
        }
      });
    }
    source.onerror = () => {
      source.close();
      if (closed) return;
      failedAt ??= Date.now();
      retry();
    };
  };
  // An EventSource does not say why it failed: a cheap call does (a refused token refreshes
  // or signs out). Then again, later each time, also when the token could not be had.
  const retry = () => setTimeout(async () => {
    if (closed) return;
    await api("/login/sessions").catch(() => {});
    wait = Math.min(wait * 2, 30_000);
    open().catch(retry);
  }, wait);
  open().catch(retry);
  return { close: () => { closed = true; source?.close(); } };
}

// ---- views --------------------------------------------------------------------------------

const VIEWS = ["sign-in", "profile", "contacts", "sessions", "talk"];

function show(view) {
  for (const name of VIEWS) $(`#${name}`).hidden = name !== view;
  // Each stream holds one of the browser's six HTTP/1.1 connections to the server: only the
  // shown view's are open.
  if (view !== "contacts") closePresence();
  // The voice room stays up meanwhile; the bites stream reopens with the view.
  if (view !== "talk") closeConversationStreams();
  if (view === "talk" && current) openConversation(current).catch(complain);
  $("#nav").hidden = view === "sign-in";
  // What the last view said does not belong to the next.
  clearProblem();
  say("");
  ({ profile: loadProfile, contacts: loadContacts, sessions: loadSessions, talk: loadConversations })[view]?.()
    .catch(complain);
}

/** Runs `work` on each `kind` event of `selector` (a form's submit is not sent anywhere);
 * a failure is told in words. */
function handle(selector, kind, work) {
  $(selector).addEventListener(kind, (event) => {
    if (kind === "submit") event.preventDefault();
    clearProblem();
    work(event).catch(complain);
  });
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function button(text, onClick, attributes = {}) {
  const node = element("button", text, { type: "button", ...attributes });
  node.addEventListener("click", () => onClick().catch(complain));
  return node;
}

function nameOf(user) {
  const name = [user.first_name, user.last_name].filter(Boolean).join(" ");
  return name || (user.username ? `@${user.username}` : user.phone_number || "Someone");
}

const pictures = new Map();
/** A picture the API serves, as an object URL (the API needs the token; `<img>` cannot send it). */
async function pictureUrl(name) {
  if (!pictures.has(name)) {
    pictures.set(name, api(`/pictures/picture/${name}?size=thumb`, { raw: true })
      .then(async (answer) => URL.createObjectURL(await answer.blob())));
  }
  return pictures.get(name);
}

async function upload(file) {
  const form = new FormData();
  form.append("file", file);
  const stored = await api("/pictures/upload", { method: "POST", form });
  return stored.name;
}

function ago(seconds) {
  const minutes = Math.round((Date.now() / 1000 - seconds) / 60);
  if (minutes < 1) return "just now";
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  return hours < 24 ? `${hours} h ago` : `${Math.round(hours / 24)} d ago`;
}

// ---- sign in ------------------------------------------------------------------------------

let nonce = null;

function byEmail() {
  return document.querySelector('input[name="by"]:checked').value === "email";
}

for (const radio of document.querySelectorAll('input[name="by"]')) {
  radio.addEventListener("change", () => {
    $("#phone-field").hidden = byEmail();
    $("#email-field").hidden = !byEmail();
  });
}

handle("#ask-code", "submit", async () => {
  const [path, body] = byEmail()
    ? ["/login/init/email", { email: $("#email").value.trim() }]
    : ["/login/init", { phone_number: $("#phone").value.trim() }];
  const answer = await postAnonymous(path, body);
  if (!answer.ok) throw await problemOf(answer);
  nonce = (await answer.json()).nonce;
  $("#enter-code").hidden = false;
  $("#code").focus();
  say("A code is on its way.");
});

handle("#enter-code", "submit", async (event) => {
  const answer = await postAnonymous("/login/verify", {
    code: $("#code").value.trim(),
    nonce,
    clientid: clientId(),
  });
  if (!answer.ok) throw await problemOf(answer);
  const pair = await answer.json();
  keep(pair);
  $("#code").value = "";
  $("#enter-code").hidden = true;
  signedIn(pair.new_user ? "profile" : "talk");
});

let pinger = null;
let events = null;

function signedIn(view) {
  say("");
  show(view);
  const ping = () => api("/heartbeat/ping", { method: "POST", body: { status: "0" } }).catch(() => {});
  ping();
  pinger = setInterval(ping, PING_EVERY_MS);
  events = stream("/core/user/subscribe/conversation", {
    message: (event) => {
      const changed = JSON.parse(event.data);
      if (current && changed.id === current.id) {
        if (event.type === "delete") {
          leaveRoom();
          closeConversation();
        } else if (event.type === "update") {
          current = { ...current, ...changed };
          $("#conversation-title").textContent = current.title || "Untitled";
        }
      }
      if (!$("#talk").hidden) loadConversations().catch(complain);
    },
  }, async () => {
    // Left or removed while the stream was down: its other streams would be refused forever.
    const was = current;
    const all = await loadConversations();
    if (was && current === was && !all.some((conversation) => conversation.id === was.id)) {
      leaveRoom();
      closeConversation();
    }
  });
}

function signedOut() {
  clearInterval(pinger);
  events?.close();
  leaveRoom();
  closeConversation();
  forget();
  for (const url of pictures.values()) url.then((href) => URL.revokeObjectURL(href)).catch(() => {});
  pictures.clear();
  show("sign-in");
}

$("#sign-out").addEventListener("click", async () => {
  await api("/login/logout", { method: "POST" }).catch(() => {});
  signedOut();
  say("Signed out.");
});

for (const item of document.querySelectorAll("#nav [data-view]")) {
  item.addEventListener("click", () => show(item.dataset.view));
}

// ---- profile, sessions ----------------------------------------------------------------------

const profileLoads = latestOnly();

async function loadProfile() {
  const stale = profileLoads();
  const form = $("#profile-form");
  // Nothing typed before the stored values arrive is overwritten by them.
  const fields = [...form.elements];
  for (const field of fields) field.disabled = true;
  let me;
  try {
    me = await api(`/core/user/id/${session.user}`);
  } finally {
    if (!stale()) for (const field of fields) field.disabled = false;
  }
  if (stale()) return;
  for (const field of ["first_name", "last_name", "username", "bio"]) {
    form.elements[field].value = me[field] ?? "";
  }
  const picture = $("#profile-picture");
  picture.hidden = !me.profile_pic;
  if (me.profile_pic) picture.src = await pictureUrl(me.profile_pic);
}

handle("#profile-form", "submit", async (event) => {
  const form = event.target;
  const changes = {};
  for (const field of ["first_name", "last_name", "bio"]) changes[field] = form.elements[field].value.trim();
  changes.username = form.elements.username.value.trim() || null;
  const file = $("#profile-file").files[0];
  if (file) changes.profile_pic = await upload(file);
  await api("/core/user", { method: "PATCH", body: changes });
  $("#profile-file").value = "";
  await loadProfile();
  say("Profile saved.");
});

async function loadSessions() {
  const list = $("#session-list");
  list.replaceChildren();
  for (const device of await api("/login/sessions")) {
    const item = element("li");
    item.append(element("span", device.client_id));
    item.append(element("span", `last used ${ago(device.last_used_at / 1000)}`, { class: "muted" }));
    if (device.current) {
      item.append(element("span", "(this browser)", { class: "muted" }));
    } else {
      item.append(button("Revoke", async () => {
        await api(`/login/sessions/${device.sid}`, { method: "DELETE" });
        await loadSessions();
      }, { "aria-label": `Revoke ${device.client_id}` }));
    }
    list.append(item);
  }
}

// ---- contacts and presence --------------------------------------------------------------------

/** Presence streams of the contacts shown, and the timer that ages what they said. */
const presence = new Map();
let presenceClock = null;
/** A contact counts as online this long after their last ping (they ping every 20 s). */
const ONLINE_FOR_S = 60;
/** Streams open at once: the browser has six connections to the server, and the rest of the
 * page needs some. Contacts past these show no presence. */
const MAX_PRESENCE = 3;

function closePresence() {
  for (const watch of presence.values()) watch.stream.close();
  presence.clear();
  clearInterval(presenceClock);
  presenceClock = null;
}

function showPresence({ dot, label, seen }) {
  const online = seen !== null && Date.now() / 1000 - seen.time < ONLINE_FOR_S;
  dot.classList.toggle("online", online);
  dot.setAttribute("aria-label", online ? "online" : "offline");
  label.textContent = online ? "online" : seen ? `last seen ${ago(seen.time)}` : "not seen yet";
}

function watchPresence(user, dot, label) {
  if (presence.size >= MAX_PRESENCE) {
    label.textContent = "";
    return;
  }
  const watch = { dot, label, seen: null };
  watch.stream = stream(`/heartbeat/subscribe/${user}`, {
    message: (seen) => {
      watch.seen = seen;
      showPresence(watch);
    },
  });
  presence.set(user, watch);
  // Silence is news too: a contact who stopped pinging goes offline.
  presenceClock ||= setInterval(() => presence.forEach(showPresence), 30_000);
}

async function contacts() {
  return api("/core/user/contact?limit=1000");
}

async function loadContacts() {
  closePresence();
  const list = $("#contact-list");
  list.replaceChildren();
  for (const user of await contacts()) {
    const item = element("li");
    const dot = element("span", undefined, { class: "dot", role: "img", "aria-label": "offline" });
    const seen = element("span", "not seen yet", { class: "muted" });
    if (user.profile_pic) {
      const picture = element("img", undefined, { class: "avatar", alt: "" });
      pictureUrl(user.profile_pic).then((url) => { picture.src = url; }).catch(() => {});
      item.append(picture);
    }
    item.append(dot, element("span", nameOf(user)), seen);
    watchPresence(user.id, dot, seen);
    list.append(item);
  }
}

handle("#add-contact", "submit", async (event) => {
  await api("/core/user/contact", {
    method: "POST",
    body: { phone_number: event.target.elements.phone_number.value.trim() },
  });
  event.target.reset();
  await loadContacts();
});

// ---- conversations ----------------------------------------------------------------------------

let current = null;
/** The open conversation's streams: its bites, and its members. */
let biteEvents = null;
let memberEvents = null;

function closeConversationStreams() {
  biteEvents?.close();
  memberEvents?.close();
  biteEvents = memberEvents = null;
}

const conversationLoads = latestOnly();

/** Lists the caller's conversations (and returns them). */
async function loadConversations() {
  const stale = conversationLoads();
  const all = await api("/core/user/conversation?limit=1000");
  if (stale()) return all;
  all.sort((a, b) => Number(b.pinned) - Number(a.pinned) || (a.title || "").localeCompare(b.title || ""));
  // Rebuilt even while hidden, so it is current when shown.
  const list = $("#conversation-list");
  list.replaceChildren();
  for (const conversation of all) {
    const item = element("li", undefined, conversation.id === current?.id ? { class: "selected" } : {});
    item.append(button(conversation.title || "Untitled", () => openConversation(conversation)));
    item.append(button(conversation.pinned ? "Unpin" : "Pin", async () => {
      await api(`/core/user/conversation/${conversation.id}/pin`, { method: conversation.pinned ? "DELETE" : "POST" });
      await loadConversations();
    }, { "aria-label": `${conversation.pinned ? "Unpin" : "Pin"} ${conversation.title || "Untitled"}` }));
    list.append(item);
  }
  return all;
}

$("#new-conversation").addEventListener("click", () => {
  $("#create-conversation").hidden = false;
  $("#title").focus();
});

handle("#create-conversation", "submit", async (event) => {
  const title = $("#title").value.trim();
  const created = await api("/core/user/conversation", { method: "POST", body: title ? { title } : {} });
  event.target.reset();
  event.target.hidden = true;
  await loadConversations();
  await openConversation(created);
});

async function openConversation(conversation) {
  if (current?.id !== conversation.id) leaveRoom();
  closeConversationStreams();
  current = conversation;
  $("#conversation").hidden = false;
  $("#conversation-title").textContent = conversation.title || "Untitled";
  $("#search-results").replaceChildren();
  $("#transcript").textContent = "";
  $("#bite-list").replaceChildren();
  bites.clear();
  opening += 1;
  // Streamed first, so a bite stored while the list loads is not missed (one shown twice is
  // recognised by its key). After a reconnection, the bites stored since it failed.
  biteEvents = stream(`/store/bite/${conversation.id}/subscribe`, {
    bite: (bite) => addBite(bite, true),
    transcript: (said) => {
      const bite = bites.get(biteKey(said));
      if (bite) bite.transcript = said.transcript ?? said.text;
    },
  }, (failedAt) => loadBites(conversation.id, catchUpFrom(failedAt)));
  // Members added or removed by others, while the conversation is open.
  const members = () => loadMembers(conversation.id);
  memberEvents = stream(`/core/user/subscribe/conversation/${conversation.id}/member`, {
    message: (event) => {
      const changed = JSON.parse(event.data);
      // The caller removed (or gone from another tab): the server ends this stream next.
      if (event.type === "delete" && changed.user === session.user) {
        leaveRoom();
        closeConversation();
        loadConversations().catch(complain);
      } else {
        members().catch(complain);
      }
    },
  }, members);
  try {
    await Promise.all([loadMembers(conversation.id), loadBites(conversation.id), loadConversations()]);
  } catch (err) {
    // Closed meanwhile (left, removed, another opened): what failed no longer matters.
    if (current === conversation) throw err;
  }
}

function closeConversation() {
  closeConversationStreams();
  current = null;
  $("#conversation").hidden = true;
}

/** Names of the open conversation's members, by user id. */
const names = new Map();

const memberLoads = latestOnly();

async function loadMembers(conversation = current.id) {
  const stale = memberLoads();
  const [members, known] = await Promise.all([
    api(`/core/user/conversation/${conversation}/member?limit=1000`),
    contacts(),
  ]);
  if (stale() || current?.id !== conversation) return;
  names.clear();
  for (const user of members) names.set(user.id, nameOf(user));
  const list = $("#member-list");
  list.replaceChildren(element("li", "You"));
  const inside = new Set(members.map((user) => user.id));
  for (const user of members) {
    const item = element("li", nameOf(user));
    item.append(button("Remove", async () => {
      await api(`/core/user/conversation/${current.id}/member/${user.id}`, { method: "DELETE" });
      await loadMembers();
    }, { "aria-label": `Remove ${nameOf(user)}` }));
    list.append(item);
  }
  const choice = $("#member-choice");
  choice.replaceChildren();
  for (const user of known) {
    if (!inside.has(user.id)) choice.append(element("option", nameOf(user), { value: user.id }));
  }
  nameSpeakers();
}

handle("#rename-conversation", "submit", async (event) => {
  const title = event.target.elements.title.value.trim();
  current = await api(`/core/user/conversation/${current.id}`, { method: "PATCH", body: { title } });
  $("#conversation-title").textContent = current.title || "Untitled";
  event.target.reset();
  await loadConversations();
});

handle("#conversation-file", "change", async (event) => {
  const picture = await upload(event.target.files[0]);
  current = await api(`/core/user/conversation/${current.id}`, { method: "PATCH", body: { picture } });
  event.target.value = "";
  say("Conversation picture set.");
});

handle("#add-member", "submit", async (event) => {
  const id = $("#member-choice").value;
  if (!id) throw new Problem(undefined, "Add them as a contact first.");
  await api(`/core/user/conversation/${current.id}/member`, { method: "POST", body: { id } });
  await loadMembers();
});

handle("#leave", "click", async () => {
  await api(`/core/user/conversation/${current.id}/member/${session.user}`, { method: "DELETE" });
  leaveRoom();
  closeConversation();
  await loadConversations();
});

// ---- bites, transcripts, search -------------------------------------------------------------

/** The open conversation's bites shown, by key. */
const bites = new Map();
/** The newest bites shown. */
const SHOWN_BITES = 200;
const biteKey = (bite) => `${bite.start}/${bite.user}/${bite.client}`;

const WEEK_MS = 7 * 24 * 3600 * 1000;
/** How far before a stream's failure its catch-up looks: bites are listed by their start, and
 * one stored during the outage started up to its length earlier (`bites.max_bite_ms`, 30 s by
 * default). */
const CATCH_UP_MS = 5 * 60 * 1000;
/** Counts conversation openings: an answer for an earlier one is dropped. */
let opening = 0;

/** Where a catch-up starts: before the failure and before the newest bite shown (the
 * server's clock, which the browser's may not match). */
function catchUpFrom(failedAt) {
  let from = failedAt;
  let newest = null;
  for (const bite of bites.values()) newest = Math.max(newest ?? bite.start, bite.start);
  if (newest !== null) from = Math.min(from, newest);
  return from - CATCH_UP_MS;
}

/** The newest bites: pages follow `Link: rel="next"` (oldest first) from a week back, or from
 * `since` (a catch-up); added to those shown, in order, and transcripts filled in. */
async function loadBites(conversation = current.id, since = Date.now() - WEEK_MS) {
  const mine = opening;
  let next = `/store/bite/${conversation}?from=${since}&limit=${SHOWN_BITES}`;
  const found = [];
  for (let page = 0; next && page < 50; page += 1) {
    const answer = await api(next, { raw: true });
    found.push(...(await answer.json()));
    next = answer.headers.get("Link")?.match(/<([^>]+)>;\s*rel="next"/)?.[1];
  }
  if (mine !== opening || current?.id !== conversation) return;
  for (const bite of found.slice(-SHOWN_BITES)) addBite(bite, false);
}

/** Shows a bite in the timeline (newest first), once; `fresh` when it has just been said. */
function addBite(bite, fresh) {
  if (bite.conversation !== current?.id) return;
  const shown = bites.get(biteKey(bite));
  if (shown) {
    shown.transcript ??= bite.transcript;
    return;
  }
  bites.set(biteKey(bite), bite);
  const when = new Date(bite.start).toLocaleTimeString();
  const item = element("li", undefined, { "data-start": String(bite.start) });
  item.append(element("span", `${when} · ${(bite.duration / 1000).toFixed(1)} s`));
  item.append(element("span", speakerName(bite.user), { class: "muted", "data-user": bite.user }));
  item.append(button("Play", () => play(bite, 0), { "aria-label": `Play bite of ${when}` }));
  const list = $("#bite-list");
  const older = [...list.children].find((other) => Number(other.dataset.start) < bite.start);
  list.insertBefore(item, older ?? null);
  if (fresh) say(`New bite at ${when}.`);
}

const speakerName = (user) => (user === session.user ? "you" : names.get(user) || "someone who left");

/** Names the timeline's speakers again, once the members are known. */
function nameSpeakers() {
  for (const label of $("#bite-list").querySelectorAll("[data-user]")) {
    label.textContent = speakerName(label.dataset.user);
  }
}

async function play(bite, fromMs) {
  const who = `user=${encodeURIComponent(bite.user)}&client=${encodeURIComponent(bite.client)}`;
  const answer = await api(`/store/bite/${current.id}/start/${bite.start}?${who}`, { raw: true });
  const player = $("#player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(await answer.blob());
  player.hidden = false;
  player.currentTime = fromMs / 1000;
  await player.play().catch(() => {});
  // The list carries each transcript once there is one, and the stream fills it in.
  const known = bites.get(biteKey(bite))?.transcript ?? bite.transcript;
  $("#transcript").textContent = known || "No transcript yet.";
}

/** The server's snippet (escaped, with `<mark>`) as nodes, without parsing it as HTML. */
function snippet(text) {
  const node = element("span");
  const unescape = (part) => part.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
  text.split(/(<mark>[\s\S]*?<\/mark>)/).forEach((part) => {
    const marked = part.match(/^<mark>([\s\S]*)<\/mark>$/);
    node.append(marked ? element("mark", unescape(marked[1])) : document.createTextNode(unescape(part)));
  });
  return node;
}

handle("#search-form", "submit", async () => {
  const results = $("#search-results");
  results.replaceChildren();
  const q = $("#search").value.trim();
  const found = await api(`/store/transcription/${current.id}/search?q=${encodeURIComponent(q)}`);
  if (found.length === 0) results.append(element("li", "Nothing found."));
  for (const hit of found) {
    const item = element("li");
    const said = snippet(hit.snippet);
    const when = new Date(hit.start).toLocaleTimeString();
    item.append(said, button("Play from here", () => play({ ...hit, transcript: said.textContent }, hit.offset_ms), {
      "aria-label": `Play the bite of ${when} from the match`,
      "data-offset-ms": String(hit.offset_ms),
    }));
    results.append(item);
  }
});

// ---- the voice room -------------------------------------------------------------------------

let room = null;

async function joinRoom() {
  clearProblem();
  if (!navigator.mediaDevices) {
    throw new Problem(undefined, "Talking needs the page over HTTPS (or on localhost): the browser keeps the microphone from other pages.");
  }
  const config = await api("/webrtc/config");
  const microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
  const mic = microphone.getAudioTracks()[0];
  mic.enabled = false;
  const pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
  pc.addTrack(mic, microphone);
  const socket = new WebSocket(`${location.origin.replace(/^http/, "ws")}/webrtc/connect?token=${encodeURIComponent(await token())}`);
  const speakers = new Map();
  room = { pc, socket, mic, microphone, speakers, meter: null };
  pc.ontrack = (event) => {
    // One element per track: two devices of one user share a stream.
    const audio = new Audio();
    audio.srcObject = new MediaStream([event.track]);
    audio.play().catch(() => {});
    // The stream id is the speaker's user id in every browser (track ids are Chromium's only).
    const user = event.streams[0]?.id || "";
    const id = event.track.id;
    speakers.set(id, { user, audio, mid: event.transceiver?.mid });
    const gone = () => {
      audio.srcObject = null;
      speakers.delete(id);
      showSpeakers();
    };
    event.streams[0]?.addEventListener("removetrack", (removed) => {
      if (removed.track.id === id) gone();
    });
    event.track.addEventListener("ended", gone);
    showSpeakers();
  };
  socket.onmessage = async ({ data }) => {
    const split = data.indexOf("::");
    const [tag, payload] = [data.slice(0, split), data.slice(split + 2)];
    try {
      if (tag === "answer") await pc.setRemoteDescription({ type: "answer", sdp: payload });
      if (tag === "offer") {
        await pc.setRemoteDescription({ type: "offer", sdp: payload });
        await pc.setLocalDescription(await pc.createAnswer());
        socket.send(`answer::${pc.localDescription.sdp}`);
      }
      if (tag === "ice" && pc.remoteDescription) await pc.addIceCandidate(JSON.parse(payload)).catch(() => {});
      if (tag === "error") {
        const refused = JSON.parse(payload);
        if (refused.code === "session_ended") signedOut();
        complain(new Problem(refused.code, refused.message));
      }
    } catch (err) {
      complain(err);
    }
  };
  socket.onclose = () => {
    if (room?.socket === socket) leaveRoom();
  };
  await new Promise((resolve, reject) => {
    socket.onopen = resolve;
    socket.onerror = () => reject(new Problem("service_unavailable"));
  });
  await api(`/webrtc/join/${current.id}`, { method: "POST" });
  await pc.setLocalDescription(await pc.createOffer());
  socket.send(`offer::${pc.localDescription.sdp}`);
  room.meter = setInterval(showLevels, 300);
  for (const control of ["#talk-button", "#open-mic", "#leave-room"]) $(control).disabled = false;
  $("#join").disabled = true;
  say("In the voice room. Hold Talk (or the space bar) to speak.");
}

function leaveRoom() {
  if (!room) return;
  clearInterval(room.meter);
  room.socket.close();
  room.pc.close();
  for (const track of room.microphone.getTracks()) track.stop();
  for (const { audio } of room.speakers.values()) audio.srcObject = null;
  room = null;
  for (const control of ["#talk-button", "#open-mic", "#leave-room"]) $(control).disabled = true;
  $("#open-mic").checked = false;
  $("#join").disabled = false;
  $("#speakers").replaceChildren();
}

function showSpeakers() {
  if (!room) return;
  const list = $("#speakers");
  list.replaceChildren();
  for (const [id, { user }] of room.speakers) {
    const name = user === session.user ? "you (another device)" : names.get(user) || "someone";
    list.append(element("li", name, { "data-track": id }));
  }
}

/** Who is speaking, from each incoming track's audio level. */
async function showLevels() {
  if (!room) return;
  (await room.pc.getStats()).forEach((report) => {
    if (report.type !== "inbound-rtp" || report.kind !== "audio") return;
    const item = document.querySelector(`[data-track="${CSS.escape(report.trackIdentifier || "")}"]`);
    const speaking = (report.audioLevel || 0) > 0.02;
    item?.classList.toggle("speaking", speaking);
    if (item) item.dataset.speaking = String(speaking);
    const label = item?.querySelector(".muted") || item?.appendChild(element("span", "", { class: "muted" }));
    if (label) label.textContent = speaking ? "speaking" : "";
  });
}

function talking(on) {
  if (!room || $("#open-mic").checked) return;
  room.mic.enabled = on;
  $("#talk-button").setAttribute("aria-pressed", String(on));
}

$("#join").addEventListener("click", () => {
  // Once: a second click while joining would build a second call.
  $("#join").disabled = true;
  joinRoom().catch((err) => {
    leaveRoom();
    $("#join").disabled = false;
    complain(err);
  });
});
$("#talk-button").addEventListener("contextmenu", (event) => event.preventDefault());
$("#leave-room").addEventListener("click", leaveRoom);
$("#open-mic").addEventListener("change", (event) => {
  if (!room) return;
  room.mic.enabled = event.target.checked;
  $("#talk-button").setAttribute("aria-pressed", String(event.target.checked));
});
const talkButton = $("#talk-button");
talkButton.addEventListener("pointerdown", () => talking(true));
for (const end of ["pointerup", "pointerleave", "pointercancel"]) talkButton.addEventListener(end, () => talking(false));
talkButton.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.repeat) talking(true);
});
talkButton.addEventListener("keyup", (event) => {
  if (event.key === "Enter") talking(false);
});
// The space bar talks anywhere but in a text field.
const typing = (target) => target.closest("input, textarea, select");
document.addEventListener("keydown", (event) => {
  if (event.code === "Space" && !event.repeat && room && !typing(event.target)) {
    event.preventDefault();
    talking(true);
  }
});
document.addEventListener("keyup", (event) => {
  if (event.code === "Space" && room && !typing(event.target)) talking(false);
});

// ---- start ------------------------------------------------------------------------------------

if (session) {
  signedIn("talk");
} else {
  show("sign-in");
}
