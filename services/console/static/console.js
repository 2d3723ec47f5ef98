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
