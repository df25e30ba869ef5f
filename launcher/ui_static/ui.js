// The approvals page: a live list of deferred calls fed by /api/events, answer buttons, and the
// audit trail. Every text from a run (tool, arguments, reasons) goes in via textContent, never
// as HTML: an agent chooses those strings.
"use strict";

const TOKEN_KEY = "faramesh-sandbox-token";
const token = readToken();
const rows = new Map(); // "session/id" -> <tr> of a pending approval
const ORIGINS = {sandbox: "observed by the sandbox", sdk: "reported by the agent over the SDK socket, not observed"};
let clockOffset = 0; // server time minus this browser's time, seconds
let auditHead = -1;
let verifying = false;

function readToken() {
  const found = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (found) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found[1]));
    history.replaceState(null, "", location.pathname); // keep it off the screen and out of history
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fatal(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  $("main").hidden = true;
  setStatus("stopped", "down");
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + (kind || "");
}

class Unauthorized extends Error {}

async function api(path, options) {
  const init = Object.assign({cache: "no-store"}, options || {});
  init.headers = Object.assign({"Authorization": "Bearer " + token}, init.headers || {});
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorized();
  return response;
}

function noToken() {
  fatal("Missing or wrong access token. Open the URL that `faramesh-sandbox ui` printed " +
        "(it ends in #token=…); each start of the page server makes a new one.");
}

// -- live state ---------------------------------------------------------------------------------

async function follow() {
  for (;;) {
    try {
      const response = await api("/api/events");
      if (!response.ok) throw new Error("HTTP " + response.status);
      setStatus("live", "live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          onEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (err instanceof Unauthorized) return noToken();
    }
    setStatus("reconnecting…", "down");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function onEvent(chunk) {
  let name = "message";
  const data = [];
  for (const line of chunk.split("\n")) {
    if (line.startsWith(":")) continue; // keepalive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (name === "state" && data.length) render(JSON.parse(data.join("\n")));
}

function render(state) {
  clockOffset = state.now - Date.now() / 1000;
  renderPending(state.pending);
  renderRecent(state.recent);
  renderSessions(state.sessions, state.only_session, state.runtime_error);
  const sessionFilter = $("audit-filter").elements.session;
  if (auditHead < 0 && state.only_session && !sessionFilter.value) sessionFilter.value = state.only_session;
  if (state.audit.error) showAuditError(state.audit.error);
  if (state.audit.head !== auditHead) {
    auditHead = state.audit.head;
    loadAudit();
    verify();
  }
}

function renderSessions(sessions, only, problem) {
  const parts = sessions.map((s) => s.id + " (" + s.state + (s.error ? ": " + s.error : "") + ")");
  const scope = only ? "Showing session " + only + ". " : "Showing every live run. ";
  $("sessions").textContent = scope + (parts.length ? "Runs: " + parts.join(", ") : "No run is live.") +
    (problem ? " " + problem : "");
}

function renderPending(pending) {
  const body = $("pending").tBodies[0];
  const keep = new Set();
  for (const view of pending) {
    const key = view.session + "/" + view.id;
    keep.add(key);
    if (!rows.has(key)) {
      const row = pendingRow(view);
      rows.set(key, row);
      body.appendChild(row);
    }
  }
  for (const [key, row] of rows) {
    if (!keep.has(key)) {
      row.remove();
      rows.delete(key);
    }
  }
  $("pending-count").textContent = String(rows.size);
  $("pending").hidden = rows.size === 0;
  $("no-pending").hidden = rows.size !== 0;
  tick();
}

function pendingRow(view) {
  const row = el("tr");
  row.dataset.session = view.session;
  row.dataset.id = view.id;
  row.dataset.created = view.created;
  row.dataset.expires = view.expires_at;
  const args = Object.assign({}, view.args);
  delete args.session;
  const argsCell = el("td");
  argsCell.appendChild(el("pre", JSON.stringify(args, null, 1)));
  // Whether the sandbox saw the call or the agent only reported it (SDK) matters to the answer.
  const origin = Object.hasOwn(ORIGINS, view.origin) ? view.origin + " (" + ORIGINS[view.origin] + ")" : "unknown";
  row.append(el("td", view.session), el("td", view.id), el("td", view.tool), el("td", origin), argsCell,
             el("td", view.rule_id || "-"), el("td", view.reason || ""), el("td", "", "age"),
             el("td", "", "expires"));
  const answers = el("td");
  for (const [label, answer, scope, cls] of [["Approve", "approve", "once", "approve"],
                                             ["Approve for session", "approve", "session", "approve"],
                                             ["Deny", "deny", "once", "deny"]]) {
    const button = el("button", label, cls);
    button.type = "button";
    button.addEventListener("click", () => answerCall(row, view, answer, scope));
    answers.appendChild(button);
  }
  row.appendChild(answers);
  return row;
}

async function answerCall(row, view, answer, scope) {
  const buttons = row.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  row.querySelectorAll(".row-error").forEach((n) => n.remove());
  try {
    const response = await api("/api/answer", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({session: view.session, id: view.id, answer: answer, scope: scope}),
    });
    if (response.ok) return; // the live state removes the row
    const reply = await response.json();
    row.lastChild.appendChild(el("span", reply.error || "HTTP " + response.status, "row-error"));
  } catch (err) {
    if (err instanceof Unauthorized) return noToken();
    row.lastChild.appendChild(el("span", "the page server did not answer: " + err, "row-error"));
  }
  buttons.forEach((b) => { b.disabled = false; });
}

function seconds(value) {
  const s = Math.max(0, Math.round(value));
  return s < 120 ? s + " s" : Math.floor(s / 60) + " min " + (s % 60) + " s";
}

function tick() {
  const now = Date.now() / 1000 + clockOffset;
  for (const row of rows.values()) {
    const left = Number(row.dataset.expires) - now;
    row.querySelector(".age").textContent = seconds(now - Number(row.dataset.created));
    const expires = row.querySelector(".expires");
    expires.textContent = seconds(left);
    expires.className = "expires" + (left < 30 ? " expiring" : "");
  }
}

function renderRecent(recent) {
  const list = $("recent");
  list.replaceChildren(...recent.map((view) => el("li",
    view.session + " " + view.id + " " + view.tool + ": " + view.state +
    (view.approver && view.approver !== "none" ? " by " + view.approver : "") +
    (view.scope === "session" ? " (for the session)" : ""))));
  if (!recent.length) list.appendChild(el("li", "None yet.", "empty"));
}

// -- audit trail ----------------------------------------------------------------------------------

function showAuditError(message) {
  const box = $("audit-error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadAudit() {
  const form = new FormData($("audit-filter"));
  const query = new URLSearchParams();
  for (const [name, value] of form) if (value) query.set(name, value);
  try {
    const response = await api("/api/audit?" + query);
    const reply = await response.json();
    if (!response.ok) return showAuditError(reply.error);
    showAuditError("");
    $("audit").tBodies[0].replaceChildren(...reply.records.map(auditRow));
  } catch (err) {
    if (err instanceof Unauthorized) return noToken();
    showAuditError("cannot load the audit trail: " + err);
  }
}

const EFFECTS = new Set(["PERMIT", "DENY", "DEFER"]);

function auditRow(record) {
  const effect = el("td", (record.effect || "") + (record.kind !== "decision" ? " (" + record.kind + ")" : ""));
  if (EFFECTS.has(record.effect)) effect.className = "effect-" + record.effect;
  const time = typeof record.time === "string" ? record.time.replace("T", " ").slice(0, 23) : record.time;
  const row = el("tr");
  row.append(el("td", record.seq), el("td", time), el("td", record.session), el("td", record.tool),
             el("td", record.argument), effect, el("td", record.rule_id), el("td", record.reason),
             el("td", record.approver));
  return row;
}

async function verify() {
  if (verifying) return;
  verifying = true;
  const line = $("verdict");
  try {
    const response = await api("/api/verify");
    const reply = await response.json();
    if (!response.ok) {
      line.textContent = "";
      return;
    }
    const v = reply.verdict;
    line.textContent = v.intact
      ? "Hash chain intact: " + v.records + " records, head seq " + v.head_seq + " " + v.head_hash.slice(0, 16) + "…"
      : "Hash chain BROKEN at seq " + v.problem.seq + " (" + v.problem.what + "): " + v.problem.detail;
    line.className = "verdict " + (v.intact ? "intact" : "broken");
  } catch (err) {
    if (err instanceof Unauthorized) return noToken();
    line.textContent = "cannot verify the chain: " + err;
  } finally {
    verifying = false;
  }
}

function start() {
  if (!token) return noToken();
  $("main").hidden = false;
  $("audit-filter").addEventListener("submit", (event) => {
    event.preventDefault();
    loadAudit();
  });
  $("verify").addEventListener("click", verify);
  setInterval(tick, 1000);
  follow();
}

start();
