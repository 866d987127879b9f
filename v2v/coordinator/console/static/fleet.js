// The fleet page: every guest's row, kept by id; only the rows of the page shown are drawn (50 at a
// time), at most once per animation frame, so 500 guests cost the browser what 50 do.
"use strict";

const PAGE = 50;
const ORDER = ["running", "queued", "failed", "cancelled", "succeeded"];
const fleet = { rows: new Map(), summary: null, readOnly: true, state: "", page: 0, drawn: false };

function rowsShown() {
  const text = document.getElementById("filter").value.trim().toLowerCase();
  return [...fleet.rows.values()]
    .filter((r) => !fleet.state || r.state === fleet.state)
    .filter((r) => !text || [r.name, r.host, r.worker].some((f) => f.toLowerCase().includes(text)))
    .sort((a, b) => ORDER.indexOf(a.state) - ORDER.indexOf(b.state) || (a.submitted - b.submitted));
}

function actions(row) {
  if (fleet.readOnly) return null;
  const cell = v2v.el("td", { class: "actions" });
  if (["queued", "running"].includes(row.state)) {
    cell.append(v2v.el("button", { "data-action": "cancel", text: "cancel",
      onclick: () => v2v.act(`cancel ${row.name}`, `/api/guests/${row.id}/cancel`) }));
  }
  for (const step of row.retry_from) {
    cell.append(v2v.el("button", { "data-action": "retry", text: step === "open" ? "retry" : `retry from ${step}`,
      onclick: () => v2v.act(`retry ${row.name}`, `/api/guests/${row.id}/retry`, { from_step: step }) }));
  }
  return cell;
}

function guestRow(r) {
  return v2v.el("tr", { "data-guest": r.name, "data-state": r.state, "data-id": r.id },
    v2v.el("td", {}, v2v.el("a", { href: `/guest/${r.id}`, text: r.name })),
    v2v.el("td", {}, v2v.stateBadge(r)),
    v2v.el("td", { text: r.step }),
    v2v.el("td", {}, r.total ? v2v.bar(r.done, r.total) : null),
    v2v.el("td", { class: "num", text: r.total ? `${v2v.bytes(r.done)} / ${v2v.bytes(r.total)}` : "" }),
    v2v.el("td", { class: "num", text: r.rate ? `${v2v.bytes(r.rate)}/s` : "" }),
    v2v.el("td", { class: "num", text: v2v.duration(r.eta) }),
    v2v.el("td", { text: r.host }),
    v2v.el("td", { text: r.worker }),
    v2v.el("td", { class: "num", text: String(r.attempt) }),
    actions(r));
}

function drawSummary() {
  const s = fleet.summary;
  const cards = document.getElementById("states");
  cards.replaceChildren(...[["", s.guests], ...ORDER.map((st) => [st, s.states[st] || 0])].map(([st, n]) =>
    v2v.el("div", { class: `card${fleet.state === st ? " selected" : ""}`, "data-state": st || "all",
                    onclick: () => { fleet.state = st; fleet.page = 0; draw(); } },
      v2v.el("span", { class: `state ${st}`, text: st || "all" }), v2v.el("b", { text: String(n) }))));
  document.querySelector("#hosts tbody").replaceChildren(...s.hosts.map((h) =>
    v2v.el("tr", { "data-host": h.host },
      v2v.el("td", { text: h.host }), v2v.el("td", { class: "num", text: String(h.running) }),
      v2v.el("td", { class: "num", text: h.limit ? String(h.limit) : "none" }),
      v2v.el("td", { class: "num", text: String(h.queued) }),
      v2v.el("td", { class: "num", text: h.rate ? `${v2v.bytes(h.rate)}/s` : "" }))));
  const eta = s.eta !== null ? `, done in about ${v2v.duration(s.eta)}` : "";
  document.getElementById("overall").textContent =
    `${s.left} of ${s.guests} left · ${v2v.bytes(s.done)} copied${s.rate ? ` at ${v2v.bytes(s.rate)}/s` : ""}${eta}`;
}

function draw() {
  fleet.drawn = false;
  drawSummary();
  const rows = rowsShown();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  fleet.page = Math.min(fleet.page, pages - 1);
  const shown = rows.slice(fleet.page * PAGE, (fleet.page + 1) * PAGE);
  document.querySelector("#guests tbody").replaceChildren(...shown.map(guestRow));
  const nav = document.getElementById("pages");
  nav.replaceChildren(
    v2v.el("button", { text: "‹", disabled: fleet.page === 0 || null, onclick: () => { fleet.page--; draw(); } }),
    ` page ${fleet.page + 1} of ${pages} (${rows.length} guests) `,
    v2v.el("button", { text: "›", disabled: fleet.page >= pages - 1 || null, onclick: () => { fleet.page++; draw(); } }));
}

function redraw() {
  if (!fleet.drawn) { fleet.drawn = true; requestAnimationFrame(draw); }
}

function update(msg) {
  for (const r of msg.rows) fleet.rows.set(r.id, r);
  if (msg.summary) fleet.summary = msg.summary;
  redraw();
}

async function start() {
  // The rows as they are at one sequence number, then only what changes after it: a reloaded
  // page starts from the stream's position now, not from the log's first event.
  const snap = await v2v.get("/api/fleet");
  fleet.readOnly = snap.read_only;
  document.querySelector("#guests th.actions").hidden = fleet.readOnly;
  document.getElementById("submit").hidden = !snap.can_submit;
  window.v2vStreamFrom = snap.seq;
  update(snap);
  v2v.follow(snap.seq, "", update, v2v.link);
  document.getElementById("filter").addEventListener("input", () => { fleet.page = 0; redraw(); });
  document.getElementById("send").addEventListener("click", async () => {
    const file = document.getElementById("plan").files[0];
    if (!file) return v2v.say("choose a plan file first");
    try {
      const answer = await v2v.post("/api/plan", await file.text(), "text/yaml");
      v2v.say(`submitted ${answer.submitted.length} guest(s)`);
    } catch (err) {
      v2v.say(`plan: ${err.message}`);
    }
  });
}

start().catch((err) => v2v.say(`cannot load the fleet: ${err.message}`));
