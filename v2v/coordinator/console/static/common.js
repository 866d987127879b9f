// What both pages share: formatting, the JSON API, the live stream. No build step, no libraries:
// the files are served as they are written here.
"use strict";

const v2v = {
  bytes(n) {
    if (!n) return "0 B";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  duration(s) {
    if (s === null || s === undefined) return "";
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h} h ${m} min` : m ? `${m} min ${sec} s` : `${sec} s`;
  },
  time(t) { return t ? new Date(t * 1000).toLocaleString() : ""; },
  el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v !== null && v !== undefined && v !== false) e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  },
  bar(done, total) {
    const pct = total ? Math.min(100, (100 * done) / total) : 0;
    const outer = v2v.el("div", { class: "bar", title: total ? `${pct.toFixed(0)} %` : "" });
    outer.append(v2v.el("div", { style: `width: ${pct}%` }));
    return outer;
  },
  async get(path) {
    const r = await fetch(path, { cache: "no-store" });
    if (!r.ok) throw new Error(`${path}: ${r.status}`);
    return r.json();
  },
  // Actions carry the console's header: a page of another site cannot, so it cannot act.
  async post(path, body, type = "application/json") {
    const r = await fetch(path, { method: "POST", headers: { "x-v2v-console": "1", "content-type": type },
                                  body: typeof body === "string" ? body : JSON.stringify(body || {}) });
    const answer = await r.json().catch(() => ({ error: `${r.status}` }));
    if (!r.ok) throw new Error(answer.error || `${r.status}`);
    return answer;
  },
  // The rows changed after sequence number `after`, as they change. The browser reconnects by
  // itself and sends the last id it saw (Last-Event-ID): a dropped stream misses nothing.
  follow(after, guest, onRows, onLink) {
    const q = new URLSearchParams({ after: String(after) });
    if (guest) q.set("guest", guest);
    const es = new EventSource(`/api/events?${q}`);
    es.addEventListener("rows", (m) => { onLink(true, Number(m.lastEventId)); onRows(JSON.parse(m.data)); });
    es.onerror = () => onLink(false);
    es.onopen = () => onLink(true);
    return es;
  },
  link(ok, seq) {
    const e = document.getElementById("link");
    if (!e) return;
    e.className = ok ? "live" : "lost";
    e.textContent = ok ? `live${seq ? ` · event ${seq}` : ""}` : "reconnecting…";
    if (seq) window.v2vSeq = seq;
  },
  stateBadge(row) {
    const text = row.state === "failed" && row.error ? `failed (${row.error.step})` : row.state;
    return v2v.el("span", { class: `state ${row.state}`, text });
  },
  async act(what, path, body) {
    try {
      await v2v.post(path, body);
      v2v.say("");
    } catch (err) {
      v2v.say(`${what}: ${err.message}`);
    }
  },
  say(text) {
    const e = document.getElementById("notice");
    if (e) { e.textContent = text; e.hidden = !text; }
  },
};
