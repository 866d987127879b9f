// One guest's page: what it does now, its error, its boot check, every step of every attempt, and
// its processes' logs. Its row comes live; the rest is asked again when the guest has moved on.
"use strict";

const gid = location.pathname.split("/").pop();
const page = { row: null, readOnly: true, asked: null, again: false };

function facts(r) {
  const items = [["step", r.step], ["attempt", String(r.attempt)], ["source host", r.host], ["worker", r.worker],
    ["copy", r.total ? `${v2v.bytes(r.done)} of ${v2v.bytes(r.total)}` : ""],
    ["rate", r.rate ? `${v2v.bytes(r.rate)}/s` : ""], ["ETA", v2v.duration(r.eta)],
    ["submitted", v2v.time(r.submitted)], ["started", v2v.time(r.started)], ["ended", v2v.time(r.ended)],
    ["files", r.files.join(", ")]];
  const dl = document.getElementById("facts");
  dl.replaceChildren();
  for (const [k, v] of items) if (v) dl.append(v2v.el("dt", { text: k }), v2v.el("dd", { text: v }));
  if (r.total) dl.append(v2v.el("dt", { text: "progress" }), v2v.el("dd", {}, v2v.bar(r.done, r.total)));
}

function drawError(err) {
  const box = document.getElementById("error");
  box.hidden = !err;
  if (!err) return;
  const dl = box.querySelector("dl");
  dl.replaceChildren();
  for (const [k, v] of [["guest", err.guest], ["step", err.step], ["disk", err.disk === null ? "" : String(err.disk)],
                        ["cause", err.code], ["message", err.message]]) {
    if (v) dl.append(v2v.el("dt", { text: k }), v2v.el("dd", { "data-field": k, text: v }));
  }
  const detail = document.getElementById("detail");
  detail.hidden = !err.detail;
  detail.textContent = err.detail;
}

function drawRow(r) {
  page.row = r;
  document.title = `v2v: ${r.name}`;
  document.getElementById("name").textContent = r.name;
  document.getElementById("state").replaceChildren(v2v.stateBadge(r));
  const act = document.getElementById("actions");
  act.replaceChildren();
  if (!page.readOnly) {
    if (["queued", "running"].includes(r.state)) {
      act.append(v2v.el("button", { "data-action": "cancel", text: "cancel",
        onclick: () => v2v.act("cancel", `/api/guests/${gid}/cancel`) }));
    }
    for (const step of r.retry_from) {
      act.append(v2v.el("button", { "data-action": "retry", "data-from": step,
        text: step === "open" ? "retry" : `retry from ${step}`,
        onclick: () => v2v.act("retry", `/api/guests/${gid}/retry`, { from_step: step }) }));
    }
  }
  facts(r);
  drawError(r.error);
}

function drawSteps(steps) {
  const body = document.querySelector("#timeline tbody");
  body.replaceChildren();
  let attempt = 0;
  for (const s of steps) {
    if (s.attempt !== attempt) {
      attempt = s.attempt;
      body.append(v2v.el("tr", { class: "attempt" }, v2v.el("td", { colspan: "6", text: `attempt ${attempt}` })));
    }
    const running = s.ended === null;
    body.append(v2v.el("tr", { class: s.parent ? "sub" : "phase", "data-step": s.step, "data-attempt": s.attempt,
                               "data-outcome": s.state },
      v2v.el("td", { text: s.step }), v2v.el("td", { text: s.disk === null ? "" : String(s.disk) }),
      v2v.el("td", { text: v2v.time(s.started) }),
      v2v.el("td", { class: "num", text: running ? "" : `${s.duration.toFixed(1)} s` }),
      v2v.el("td", { class: `outcome ${s.state}`, text: s.state }), v2v.el("td", { text: s.error })));
  }
}

function drawBoot(boot) {
  const box = document.getElementById("boot");
  box.hidden = !boot;
  if (!boot) return;
  document.getElementById("boot-notes").replaceChildren(...boot.notes.map((n) =>
    v2v.el("li", { class: n.warning ? "warning" : "", text: n.message })));
  const tail = document.getElementById("console-tail");
  tail.hidden = !boot.console_tail.length;
  tail.textContent = boot.console_tail.join("\n");
}

function drawLogs(logs) {
  document.getElementById("logs").replaceChildren(...logs.map((l) => {
    const d = v2v.el("details", { "data-step": l.step, "data-attempt": l.attempt },
      v2v.el("summary", { text: `attempt ${l.attempt}: ${l.step}` }));
    for (const n of l.notes) d.append(v2v.el("div", { class: n.warning ? "warning" : "", text: `${n.step}: ${n.message}` }));
    for (const p of l.processes) {
      d.append(v2v.el("div", { text: p.name + (p.cut ? ` (last ${p.lines.length} lines; ${p.cut} before)` : "") }),
               v2v.el("pre", { text: p.lines.join("\n") }));
    }
    return d;
  }));
}

// Steps and logs are asked again whenever the guest's row changed, one request at a time: a burst of
// events costs one more round, not one each.
async function details() {
  if (page.asked) { page.again = true; return; }
  page.asked = Promise.all([v2v.get(`/api/guests/${gid}`), v2v.get(`/api/guests/${gid}/logs`)]);
  try {
    const [g, logs] = await page.asked;
    page.readOnly = g.read_only;
    drawRow(g.row);
    drawSteps(g.steps);
    drawBoot(g.boot);
    const open = new Set([...document.querySelectorAll("#logs details[open]")].map((d) => d.querySelector("summary").textContent));
    drawLogs(logs.logs);
    for (const d of document.querySelectorAll("#logs details")) if (open.has(d.querySelector("summary").textContent)) d.open = true;
  } finally {
    page.asked = null;
    if (page.again) { page.again = false; details(); }
  }
}

async function start() {
  const g = await v2v.get(`/api/guests/${gid}`);
  page.readOnly = g.read_only;
  drawRow(g.row);
  drawSteps(g.steps);
  drawBoot(g.boot);
  details();
  v2v.follow(g.row.seq, gid, (msg) => { if (msg.rows.length) { drawRow(msg.rows[0]); details(); } }, v2v.link);
}

start().catch((err) => v2v.say(`cannot load guest ${gid}: ${err.message}`));
