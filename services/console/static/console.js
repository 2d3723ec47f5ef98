// Flywheel console: every action is a call to the control plane's JSON API; the page
// reloads once the API (and, for review decisions, the broker and the landing) has it.
"use strict";

const flash = (text, kind = "info") => {
  const el = document.getElementById("flash");
  el.textContent = text;
  el.className = kind;
  el.hidden = false;
};

// The session's CSRF token: every state change from this page carries it (the control
// plane refuses a console request without it, so no other site can act in your name).
const csrfMeta = document.querySelector("meta[name=csrf-token]");
const csrfToken = csrfMeta ? csrfMeta.content : "";

async function api(method, url, body) {
  const resp = await fetch(url, {
    method, headers: {"Content-Type": "application/json", "X-CSRF-Token": csrfToken},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`;
    throw new Error(message);
  }
  return data;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// The reviewer's name, kept in this browser (default: the operator's; absent on the login page).
const reviewerInput = document.getElementById("reviewer");
const defaultReviewer = (reviewerInput && reviewerInput.dataset.default) || "console";
if (reviewerInput) {
  reviewerInput.value = localStorage.getItem("flywheel.reviewer") || defaultReviewer;
  reviewerInput.addEventListener("change", () => localStorage.setItem("flywheel.reviewer", reviewerInput.value.trim()));
}
const reviewer = () => (reviewerInput && reviewerInput.value.trim()) || defaultReviewer;

// Review decisions travel as events through Kafka; wait until the control plane has landed
// the whole batch before showing the new state.
async function decide(ids, action, extra = {}) {
  if (!ids.length) { flash("select candidates first", "error"); return; }
  const reason = (document.getElementById("reason") || {}).value || undefined;
  try {
    const sent = await api("POST", "/api/review/decisions",
                           {action, reviewer: reviewer(), candidate_ids: ids, reason, ...extra});
    flash(`sent ${sent.decisions} decision(s) (batch ${sent.batch}); waiting for them to land…`);
    for (let i = 0; i < 120; i++) {
      const landed = await api("GET", `/api/review/landed/${sent.batch}`);
      if (landed.landed >= sent.decisions) {
        flash(`${sent.decisions} decision(s) landed`, "ok");
        setTimeout(() => location.reload(), 400);
        return;
      }
      await sleep(250);
    }
    flash(`batch ${sent.batch} is not landed after 30 s: is the control plane's landing running?`, "error");
  } catch (e) {
    flash(e.message, "error");
  }
}

document.querySelectorAll("[data-review-action]").forEach((button) => {
  button.addEventListener("click", () => {
    const holder = button.closest("[data-candidate]");
    const ids = holder ? [holder.dataset.candidate]
      : [...document.querySelectorAll("input[name=cid]:checked")].map((b) => b.value);
    decide(ids, button.dataset.reviewAction);
  });
});

const selectAll = document.getElementById("select-all");
if (selectAll) {
  selectAll.addEventListener("change", () => {
    document.querySelectorAll("input[name=cid]").forEach((b) => { b.checked = selectAll.checked; });
  });
}

const editForm = document.getElementById("edit-form");
if (editForm) {
  editForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    decide([editForm.dataset.candidate], "edit", {edited_response: document.getElementById("edited").value});
  });
}

document.querySelectorAll("[data-rollout-action]").forEach((button) => {
  button.addEventListener("click", async () => {
    const card = button.closest(".card");
    const reason = card.querySelector(".reason").value.trim() || `${button.dataset.rolloutAction} from the console`;
    try {
      const state = await api("POST", `/api/rollouts/${encodeURIComponent(button.dataset.alias)}/${button.dataset.rolloutAction}`,
                              {reason});
      flash(`rollout of ${state.candidate}: ${state.status}`, "ok");
      setTimeout(() => location.reload(), 400);
    } catch (e) {
      flash(e.message, "error");
    }
  });
});

// Buttons that start something (a curation run, a flywheel turn, a dataset build).
document.querySelectorAll("[data-post]").forEach((button) => {
  button.addEventListener("click", async () => {
    button.disabled = true;
    flash(`${button.dataset.label}: working…`);
    try {
      const made = await api("POST", button.dataset.post, {});
      const name = made.run_id || made.version || "";
      flash(`${button.dataset.label} ${name} ${button.dataset.done || "started"}`, "ok");
      if (button.dataset.done) setTimeout(() => location.reload(), 600);
    } catch (e) {
      flash(e.message, "error");
    } finally {
      button.disabled = false;
    }
  });
});

// Links that carry the reviewer's name (the desk's "second opinion" queue leaves out what
// you decided yourself), and the desk's filter form.
const withReviewer = () => {
  document.querySelectorAll("a[data-with-reviewer]").forEach((a) => {
    const url = new URL(a.href, location.href);
    url.searchParams.set("reviewer", reviewer());
    a.href = url.pathname + url.search;
  });
  document.querySelectorAll("[data-reviewer-field]").forEach((f) => { f.value = reviewer(); });
};
withReviewer();
if (reviewerInput) reviewerInput.addEventListener("change", withReviewer);

// ---------------------------------------------------------------------------- find similar
// The nearest candidates by prompt vector (GET /api/review/candidates/ID/similar), ticked
// when close and still pending, to decide as a group with the candidate shown.
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  children.forEach((c) => node.append(c));
  return node;
};

async function loadSimilar(panel) {
  if (!panel) return;
  const id = panel.dataset.similarFor;
  const list = panel.querySelector(".similar-list");
  list.textContent = "looking…";
  const found = (await api("GET", `/api/review/candidates/${encodeURIComponent(id)}/similar?k=8`)).data;
  list.textContent = "";
  if (!found.length) {
    list.append(el("p", {className: "muted", textContent: "no stored prompt vector near this one (curation stores one for each candidate it keeps)"}));
    return;
  }
  const ul = el("ul");
  found.forEach((s) => {
    const box = el("input", {type: "checkbox", name: "similar", value: s.candidate_id,
                             checked: s.similarity >= 0.8 && s.state === "pending"});
    box.dataset.state = s.state;
    box.dataset.response = s.response || "";
    const link = el("a", {href: `/console/review/${encodeURIComponent(s.candidate_id)}`, textContent: s.candidate_id.slice(0, 12)});
    ul.append(el("li", {className: "similar-item"},
                 el("label", {}, box, ` ${(100 * s.similarity).toFixed(0)}% `),
                 el("span", {className: `badge ${s.state}`, textContent: s.state}), " ", link,
                 el("span", {className: "muted", textContent: ` ${s.task_type || ""} · ${(s.prompt_text || "").slice(0, 90)}`})));
  });
  list.append(ul, el("p", {className: "actions"},
    el("button", {type: "button", textContent: "Approve this and the ticked ones (A)"}),
    el("button", {type: "button", textContent: "Reject this and the ticked ones (R)"})));
  const [approve, reject] = list.querySelectorAll(".actions button");
  approve.dataset.groupAction = "approve";
  reject.dataset.groupAction = "reject";
}

function similarPanel() {
  return document.querySelector(".similar[data-similar-for]");
}

function groupTargets(panel) {
  if (!panel) return [];
  return [...panel.querySelectorAll("input[name=similar]:checked")];
}

let desk = null;  // the review desk's controller, on its page

function decideGroup(action) {
  const panel = similarPanel();
  const ticked = groupTargets(panel);
  if (!ticked.length) { flash("no similar candidates ticked: find similar first (s)", "error"); return; }
  const ids = [panel.dataset.similarFor, ...ticked.map((b) => b.value)];
  if (desk) desk.act(action, ticked); else decide(ids, action);
}

document.addEventListener("click", (ev) => {
  const load = ev.target.closest("[data-similar-load]");
  if (load) {
    loadSimilar(load.closest(".similar")).catch((e) => flash(e.message, "error"));
    return;
  }
  const group = ev.target.closest("[data-group-action]");
  if (group) decideGroup(group.dataset.groupAction);
});

// ---------------------------------------------------------------------------- the review desk
// One candidate at a time. A decision is sent at once and the next card (already loaded)
// shows without waiting; the log beside says when each decision has landed. Undo sends the
// decision that restores the state the candidate had before.
const RESTORE = {pending: "reset", approved: "approve", rejected: "reject", edited: "edit"};

function initDesk(root) {
  const ids = JSON.parse(root.dataset.ids || "[]");
  const queue = root.dataset.queue;
  const holder = document.getElementById("card-holder");
  const progress = document.getElementById("desk-progress");
  const logList = document.getElementById("desk-log");
  const editForm = document.getElementById("desk-edit");
  const edited = document.getElementById("desk-edited");
  const cache = new Map();    // candidate id -> Promise of its card's HTML
  const decided = new Map();  // candidate id -> action, in this session
  const history = [];         // [{prev: [{id, state, edited}], action, index}]
  let pos = 0;
  let showing = 0;
  if (ids.length) cache.set(ids[0], Promise.resolve(holder.innerHTML));

  const card = () => holder.querySelector(".review-card");
  const cardHtml = (id) => {
    if (!cache.has(id)) {
      const loading = fetch(`/console/review/${encodeURIComponent(id)}/card`).then((r) => {
        if (!r.ok) throw new Error(`cannot load candidate ${id}: ${r.status}`);
        return r.text();
      });
      loading.catch(() => cache.delete(id));
      cache.set(id, loading);
    }
    return cache.get(id);
  };
  const undecidedAfter = (from) => {
    for (let i = from + 1; i < ids.length; i++) if (!decided.has(ids[i])) return i;
    for (let i = 0; i <= Math.min(from, ids.length - 1); i++) if (!decided.has(ids[i])) return i;
    return null;
  };
  const status = () => {
    progress.textContent = ids.length ? `${pos + 1} of ${ids.length} · ${decided.size} decided here` : "nothing to review";
  };
  const preload = () => {
    let i = pos;
    for (let k = 0; k < 2; k++) {
      i = undecidedAfter(i);
      if (i === null || i === pos) break;
      cardHtml(ids[i]).catch(() => {});
    }
  };
  async function show(i) {
    if (i === null || i < 0 || i >= ids.length) return;
    const ticket = ++showing;
    pos = i;
    closeEdit();
    let html;
    try {
      html = await cardHtml(ids[i]);
    } catch (e) {
      flash(e.message, "error");
      return;
    }
    if (ticket !== showing) return;  // a later move won
    holder.innerHTML = html;
    status();
    preload();
  }
  function showDone() {
    showing++;
    holder.textContent = "";
    holder.append(el("p", {id: "desk-done", textContent: `All ${ids.length} candidates of this queue are decided here. `},
                     el("a", {href: "/console/review", textContent: "Back to the queue"})));
    progress.textContent = `done · ${decided.size} decided here`;
  }
  const logLine = (text, kind = "") => {
    const li = el("li", {textContent: text, className: kind});
    logList.prepend(li);
    return li;
  };
  async function watch(sent, li, label) {
    for (let i = 0; i < 120; i++) {
      const landed = await api("GET", `/api/review/landed/${sent.batch}`);
      if (landed.landed >= sent.decisions) {
        li.textContent = `${label}: landed`;
        li.className = "ok";
        return;
      }
      await sleep(250);
    }
    li.textContent = `${label}: not landed after 30 s (is the landing running?)`;
    li.className = "error";
  }
  const reasonFor = (action) => {
    const typed = ((document.getElementById("reason") || {}).value || "").trim();
    if (queue === "conflicts") return `${root.dataset.settled}: ${typed || `${action} on the review desk`}`;
    return typed || undefined;
  };
  const send = (targets, action, extra, reason) =>
    api("POST", "/api/review/decisions", {action, reviewer: reviewer(), candidate_ids: targets, reason, ...extra});

  // `others`: ticked similar candidates (checkboxes carrying their state) decided with this one.
  async function act(action, others = [], extra = {}) {
    const c = card();
    if (!c) return;
    const prev = [{id: c.dataset.candidate, state: c.dataset.state, edited: c.querySelector(".prev-edited").value}]
      .concat(others.map((b) => ({id: b.value, state: b.dataset.state, edited: b.dataset.response})));
    const targets = prev.map((p) => p.id);
    const at = pos;
    targets.forEach((id) => { decided.set(id, action); cache.delete(id); });
    history.push({prev, action, index: at});
    const label = `${action} ${targets.length > 1 ? `${targets.length} candidates` : targets[0].slice(0, 12)}`;
    const li = logLine(`${label}: sending`);
    const next = undecidedAfter(at);
    if (next === null) showDone(); else show(next);
    try {
      const sent = await send(targets, action, extra, reasonFor(action));
      li.textContent = `${label}: sent`;
      watch(sent, li, label).catch((e) => { li.textContent = `${label}: ${e.message}`; li.className = "error"; });
    } catch (e) {  // refused: nothing changed, back to it
      targets.forEach((id) => decided.delete(id));
      history.pop();
      li.textContent = `${label}: refused: ${e.message}`;
      li.className = "error";
      flash(e.message, "error");
      show(at);
    }
  }
  async function undo() {
    const last = history.pop();
    if (!last) { flash("nothing to undo", "error"); return; }
    last.prev.forEach((p) => { decided.delete(p.id); cache.delete(p.id); });
    const label = `undo ${last.action} ${last.prev.length > 1 ? `${last.prev.length} candidates` : last.prev[0].id.slice(0, 12)}`;
    const li = logLine(`${label}: sending`);
    const byAction = {};
    last.prev.forEach((p) => {
      const action = RESTORE[p.state] || "reset";
      const key = action === "edit" ? `edit:${p.id}` : action;
      (byAction[key] = byAction[key] || {action, ids: [], extra: action === "edit" ? {edited_response: p.edited} : {}}).ids.push(p.id);
    });
    try {
      const sent = await Promise.all(Object.values(byAction).map((b) => send(b.ids, b.action, b.extra, "undo on the review desk")));
      li.textContent = `${label}: sent`;
      await show(last.index);
      Promise.all(sent.map((s) => watch(s, li, label))).catch((e) => { li.textContent = `${label}: ${e.message}`; li.className = "error"; });
    } catch (e) {
      history.push(last);
      last.prev.forEach((p) => decided.set(p.id, last.action));
      li.textContent = `${label}: refused: ${e.message}`;
      li.className = "error";
      flash(e.message, "error");
    }
  }
  function openEdit() {
    const c = card();
    if (!c) return;
    edited.value = c.querySelector(".edit-default").value;
    editForm.hidden = false;
    edited.focus();
  }
  function closeEdit() {
    if (!editForm.hidden) editForm.hidden = true;
  }
  function submitEdit() {
    if (!edited.value.trim()) { flash("an edit needs the corrected answer", "error"); return; }
    const text = edited.value;
    closeEdit();
    act("edit", [], {edited_response: text});
  }
  const move = (step) => {
    const i = pos + step;
    if (i >= 0 && i < ids.length) show(i);
  };

  editForm.addEventListener("submit", (ev) => { ev.preventDefault(); submitEdit(); });
  root.querySelectorAll("[data-desk-action]").forEach((b) => b.addEventListener("click", () => {
    if (b.dataset.deskAction === "edit") openEdit(); else act(b.dataset.deskAction);
  }));
  root.querySelectorAll("[data-desk-move]").forEach((b) => b.addEventListener("click", () => move(Number(b.dataset.deskMove))));
  root.querySelector("[data-desk-undo]").addEventListener("click", undo);
  root.querySelector("[data-desk-edit-cancel]").addEventListener("click", closeEdit);
  document.addEventListener("keydown", (ev) => {
    if (ev.target === edited) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); submitEdit(); }
      else if (ev.key === "Escape") { ev.preventDefault(); closeEdit(); }
      return;
    }
    const t = ev.target || {};
    const typing = t.isContentEditable || ["TEXTAREA", "SELECT"].includes(t.tagName)
      || (t.tagName === "INPUT" && !["checkbox", "radio", "button", "submit"].includes(t.type));
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing) return;
    const keys = {
      a: () => act("approve"), r: () => act("reject"), e: openEdit, j: () => move(1), k: () => move(-1), u: undo,
      s: () => loadSimilar(similarPanel()).catch((e) => flash(e.message, "error")),
      A: () => decideGroup("approve"), R: () => decideGroup("reject"),
    };
    if (!keys[ev.key]) return;
    ev.preventDefault();
    keys[ev.key]();
  });
  status();
  preload();
  return {act: (action, others) => act(action, others)};
}

const deskRoot = document.getElementById("desk");
if (deskRoot) desk = initDesk(deskRoot);
