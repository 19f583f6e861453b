// kadr review: keyboard-first checking of camera-trap registrations.
// Every string from the server is set with textContent (never parsed as HTML).
"use strict";
const cfg = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const state = {queue: [], idx: 0, photo: 0, details: new Map(), selected: new Set(),
               classes: [], mode: null, typed: "", chain: null};

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function say(text, bad) { const s = $("status"); s.textContent = text; s.className = bad ? "bad" : ""; }
async function api(path, body) {
  const opts = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                          body: JSON.stringify(body)};
  const r = await fetch(cfg.base + path, opts);
  const data = await r.json().catch(() => ({error: r.statusText}));
  return {ok: r.ok, status: r.status, data};
}
const photoUrl = (pid, size) => `${cfg.base}photo/${size}/${pid}`;

function filters() {
  const f = new FormData($("filters")), q = new URLSearchParams();
  for (const [k, v] of f) if (v !== "") q.set(k, v);
  return q;
}
async function loadQueue(focusIds) {
  const {ok, data} = await api("api/queue?" + filters());
  if (!ok) return say(data.error, true);
  state.queue = data.units; state.classes = data.classes; state.details.clear();
  fillSelect($("filters").camera, data.cameras); fillSelect($("filters").cls, data.classes);
  const dl = $("species-list"); dl.replaceChildren(...data.classes.map((c) => { const o = el("option"); o.value = c; return o; }));
  $("total").textContent = `${data.total} registration(s)` + (data.total > data.units.length ? `, first ${data.units.length} shown` : "");
  let i = 0;
  if (focusIds) { const k = state.queue.findIndex((u) => focusIds.includes(u.id)); if (k >= 0) i = k; }
  renderQueue(); return show(Math.min(i, Math.max(0, state.queue.length - 1)));
}
function fillSelect(sel, values) {
  const keep = sel.value, have = new Set([...sel.options].map((o) => o.value));
  for (const v of values) if (!have.has(v)) { const o = el("option", v); o.value = v; sel.append(o); }
  sel.value = keep;
}
function renderQueue() {
  $("queue").replaceChildren(...state.queue.map((u, i) => {
    const li = el("li"); li.dataset.id = u.id;
    li.append(el("b", u.cls), ` ×${u.count}  ${u.camera}  ${u.start || "no time"}`);
    li.append(el("span", u.prob === null ? "" : `  p=${u.prob.toFixed(2)}`));
    if (u.reviewed) li.append(el("span", `  ✓ ${u.reviewer}`));
    if (u.flags.length) li.append(el("span", "  ⚠", "flag"));
    li.className = (i === state.idx ? "here" : "") + (state.selected.has(u.id) ? " sel" : "");
    li.onclick = (ev) => { if (ev.shiftKey) toggleSelect(u.id); else show(i); };
    return li;
  }));
  $("selected-count").textContent = `${state.selected.size} selected`;
}
function detail(id) {
  if (!state.details.has(id)) state.details.set(id, api("api/unit/" + encodeURIComponent(id)).then((r) => r.data));
  return state.details.get(id);
}
function prefetch(i) {
  const u = state.queue[i]; if (!u) return;
  detail(u.id).then((d) => (d.photo_list || []).forEach((p, k) => {
    new Image().src = photoUrl(p.id, "thumb"); if (k === 0) new Image().src = photoUrl(p.id, "display");
  }));
}
async function show(i) {
  state.idx = i; state.photo = 0;
  const u = state.queue[i];
  $("empty-queue").hidden = !!u; $("unit-head").hidden = !u;
  renderQueue();
  if (!u) return;
  const li = $("queue").children[i]; if (li) li.scrollIntoView({block: "nearest"});
  const d = await detail(u.id);
  if (state.queue[state.idx] !== u) return;  // moved on meanwhile
  if (d.error) return say(d.error, true);
  state.current = d; renderUnit(); prefetch(i + 1); prefetch(i + 2);
}
function renderUnit() {
  const d = state.current;
  $("u-class").textContent = d.cls; $("u-count").textContent = d.count;
  $("u-prob").textContent = d.prob === null ? "" : `p=${d.prob.toFixed(2)}`;
  $("u-state").textContent = d.reviewed ? `reviewed by ${d.reviewer}` : (d.source === "human" ? "regrouped, not reviewed" : "machine");
  $("u-state").className = d.reviewed ? "done" : "";
  $("u-when").textContent = `${d.camera}: ${d.start || "no time"} → ${d.end || ""}, ${d.photos} photo(s)` + (d.machine_cls && d.machine_cls !== d.cls ? `; machine said ${d.machine_cls}` : "");
  $("u-flags").replaceChildren(...d.flags.map((f) => el("div", "⚠ " + f)));
  $("strip").replaceChildren(...d.photo_list.map((p, k) => {
    const li = el("li"); const img = el("img"); img.src = photoUrl(p.id, "thumb"); img.alt = p.name; img.loading = "lazy";
    li.append(img, el("span", p.time ? p.time.slice(11) : "no time", p.time_source !== "exif" ? "mtime" : ""));
    li.onclick = () => showPhoto(k); return li;
  }));
  const choices = choiceList();
  $("choices").replaceChildren(...choices.map((c, k) => {
    const alt = d.alternatives.find((a) => a[0] === c);
    const li = el("li", `${k + 1}. ${c}` + (alt ? ` (${alt[1].toFixed(2)})` : "")); li.onclick = () => label(c); return li;
  }));
  $("neighbours").replaceChildren(...d.neighbours.map((n) => el("li", `${n.start || "no time"}  ${n.cls} ×${n.count}` + (n.reviewed ? " ✓" : ""), n.here ? "here" : "")));
  showPhoto(Math.min(state.photo, d.photo_list.length - 1));
}
function choiceList() {
  const d = state.current, out = [];
  for (const [c] of d.alternatives) if (!out.includes(c)) out.push(c);
  for (const c of [...cfg.project, ...state.classes]) if (!out.includes(c)) out.push(c);
  return out.slice(0, 9);
}
function showPhoto(k) {
  const d = state.current; if (!d || k < 0 || k >= d.photo_list.length) return;
  state.photo = k; const p = d.photo_list[k];
  $("big").src = photoUrl(p.id, "display"); $("big").alt = p.name;
  const svg = $("boxes"); svg.replaceChildren();
  for (const b of p.boxes) {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const [x, y, w, h] = b.bbox; r.setAttribute("x", x); r.setAttribute("y", y); r.setAttribute("width", w); r.setAttribute("height", h);
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title"); t.textContent = `${b.label} ${b.conf.toFixed(2)}`; r.append(t);
    svg.append(r);
  }
  $("photo-info").textContent = `${k + 1}/${d.photo_list.length}  ${p.key}  ${p.time || "no time"}` +
    (p.time_source !== "exif" ? `  (time from ${p.time_source}, not EXIF)` : "") + (p.cls ? `  machine: ${p.cls}` : "");
  [...$("strip").children].forEach((li, i) => li.classList.toggle("here", i === k));
}

// ------------------------------------------------------------------ decisions
const ref = (u) => ({id: u.id, etag: u.etag});
const cur = () => state.queue[state.idx];
// Actions run one after another, each on the state the one before left (a fast "+ +"
// counts up twice); "saved" is shown once the server has stored it and the page shows it.
function enqueue(fn) {
  state.chain = (state.chain || Promise.resolve()).then(fn).catch((e) => say(String(e), true));
  return state.chain;
}
// refs: a function giving the units at the moment the action runs (default: the current one).
function decide(action, extra, refs, advance) {
  return enqueue(async () => {
    const units = refs ? refs() : (cur() ? [ref(cur())] : []);
    if (!units || !units.length) return;
    const body = Object.assign({action, units}, typeof extra === "function" ? extra() : extra || {});
    const {ok, status, data} = await api("api/decide", body);
    if (status === 409) return conflict(data, action, body);
    if (!ok) return say(data.error, true);
    $("conflict").hidden = true;
    await replaceUnits(units.map((r) => r.id), data.units, advance);
    const n = data.saved.length;
    say(n === 1 ? `saved #${data.saved[0]}` : `saved ${n} decisions #${data.saved[0]}–#${data.saved[n - 1]}`);
    $("status").dataset.saved = data.saved.join(",");
  });
}
function replaceUnits(oldIds, fresh, advance) {
  const pos = Math.min(...oldIds.map((id) => state.queue.findIndex((u) => u.id === id)).filter((i) => i >= 0), state.idx);
  // Moving on, units the filter hides leave the list; staying (count, split), they remain
  // until the reviewer moves on, so that + + + counts up the same registration.
  const want = $("filters").reviewed.value;
  const keep = advance ? fresh.filter((u) => want === "all" || (want === "yes") === u.reviewed) : fresh;
  state.queue = state.queue.filter((u) => !oldIds.includes(u.id));
  state.queue.splice(pos, 0, ...keep);
  oldIds.forEach((id) => { state.details.delete(id); state.selected.delete(id); });
  return show(advance ? pos + keep.length : pos);
}
function conflict(data, action, body) {
  const box = $("conflict"); box.hidden = false; box.replaceChildren();
  const now = data.conflict.map((c) => c.now ? `${c.now.cls} ×${c.now.count}` + (c.now.reviewer ? ` by ${c.now.reviewer}` : "") : "regrouped or gone");
  box.append(el("span", `Conflict: this registration was changed elsewhere (now ${now.join("; ")}). `));
  const reload = el("button", "show the current state"); reload.onclick = () => { box.hidden = true; loadQueue(data.conflict.map((c) => c.id)); };
  box.append(reload);
  const still = data.conflict.filter((c) => c.now);
  if (still.length) {
    const mine = el("button", "apply mine anyway");
    const {units, action: _a, ...extra} = body;
    mine.onclick = () => { box.hidden = true; decide(action, extra, () => still.map((c) => ref(c.now)), true); };
    box.append(" ", mine);
  }
  say("conflict: nothing saved", true);
}
const accept = () => state.selected.size ? bulk("accept") : decide("accept", {}, null, true);
function label(cls) {
  if (!cls) return;
  return state.selected.size ? bulk("label", {cls}) : decide("label", {cls}, null, true);
}
function bulk(action, extra) {
  const chosen = () => state.queue.filter((u) => state.selected.has(u.id)).map(ref);
  return decide(action, extra, chosen, false).then(() => { state.selected.clear(); renderQueue(); });
}
const setCount = (n) => n >= 0 && decide("count", {count: n}, null, false);
const countBy = (delta) => decide("count", () => ({count: Math.max(0, (cur()?.count || 0) + delta)}), null, false);
function split() {
  const d = state.current; if (!d) return;
  if (state.photo === 0) return say("move to the photo where the second registration starts (→), then x", true);
  decide("split", {at: d.photo_list[state.photo].id}, null, false);
}
function merge() {
  const d = state.current; if (!d) return;
  if (!d.previous) return say("no earlier registration on this camera", true);
  decide("merge", {}, () => [ref(d.previous), ref(cur())], false);
}
function undo() {
  return enqueue(async () => {
    const {ok, data} = await api("api/undo", {});
    if (!ok) return say(data.error, true);
    await loadQueue(data.units.map((u) => u.id));
    say(`undid #${data.undone} (${data.kind})`);
  });
}
function toggleSelect(id) { state.selected.has(id) ? state.selected.delete(id) : state.selected.add(id); renderQueue(); }
function clockDialog() {
  const d = state.current; if (!d) return;
  const p = d.photo_list[state.photo];
  $("clock-camera").textContent = d.camera; $("clock-photo").textContent = `${p.name}, shown as ${p.time}`;
  $("clock-form").true_time.value = p.time || "";
  $("clock-dialog").showModal();
  $("clock-dialog").onclose = async () => {
    if ($("clock-dialog").returnValue !== "ok") return;
    const f = $("clock-form");
    const body = {camera: d.camera, photo: p.id, from_photo_on: f.from_photo_on.checked};
    if (f.how.value === "true") body.true_time = f.true_time.value; else body.offset_seconds = 60 * Number(f.offset.value);
    const {ok, data} = await api("api/clock", body);
    if (!ok) return say(data.error, true);
    say(`saved #${data.saved[0]}: clock shifted by ${data.offset_seconds} s`);
    loadQueue([d.id]);
  };
}

// ------------------------------------------------------------------ keys
document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (t.tagName === "INPUT" || t.tagName === "SELECT" || $("clock-dialog").open) return;
  const k = ev.key;
  if (state.mode === "count") {
    if (/^[0-9]$/.test(k)) { state.typed += k; say(`count: ${state.typed}`); }
    else if (k === "Enter") { state.mode = null; setCount(parseInt(state.typed || "0", 10)); }
    else if (k === "Escape") { state.mode = null; say(""); }
    ev.preventDefault(); return;
  }
  if (k === "?") $("help").hidden = !$("help").hidden;
  else if (k === "Escape") { $("help").hidden = true; state.selected.clear(); renderQueue(); }
  else if (k === "Enter") accept();
  else if (/^[1-9]$/.test(k)) label(choiceList()[Number(k) - 1]);
  else if (k === "0" || k === "e") decide("empty", {}, null, true);
  else if (k === "+" || k === "=") countBy(1);
  else if (k === "-") countBy(-1);
  else if (k === "c") { state.mode = "count"; state.typed = ""; say("count: type digits, Enter"); }
  else if (k === "s") { $("species").focus(); }
  else if (k === "ArrowRight") showPhoto(state.photo + 1);
  else if (k === "ArrowLeft") showPhoto(state.photo - 1);
  else if (k === "j" || k === "ArrowDown") show(Math.min(state.idx + 1, state.queue.length));
  else if (k === "k" || k === "ArrowUp") show(Math.max(state.idx - 1, 0));
  else if (k === "x") split();
  else if (k === "m") merge();
  else if (k === "u" || (k === "z" && (ev.ctrlKey || ev.metaKey))) undo();
  else if (k === " ") { const u = state.queue[state.idx]; if (u) toggleSelect(u.id); }
  else if (k === "A") { state.queue.forEach((u) => state.selected.add(u.id)); renderQueue(); }
  else if (k === "t") clockDialog();
  else return;
  ev.preventDefault();
});
$("species-form").onsubmit = (ev) => { ev.preventDefault(); const v = $("species").value.trim(); $("species").value = ""; $("species").blur(); label(v); };
$("filters").onchange = () => loadQueue();
$("btn-help").onclick = () => { $("help").hidden = !$("help").hidden; };
$("btn-select-all").onclick = () => { state.queue.forEach((u) => state.selected.add(u.id)); renderQueue(); };
$("btn-bulk-accept").onclick = () => bulk("accept");
$("actions").onclick = (ev) => {
  const a = ev.target.dataset && ev.target.dataset.act; if (!a) return;
  ({accept, empty: () => decide("empty", {}, null, true), plus: () => countBy(1), minus: () => countBy(-1), split, merge, undo, clock: clockDialog,
    count: () => { const n = prompt("count"); if (n !== null) setCount(parseInt(n, 10)); }})[a]();
};
$("btn-export").onclick = async () => { say("exporting…"); const {ok, data} = await api("api/export", {}); say(ok ? `exported ${data.registrations} registrations (${data.reviewed} reviewed)` : data.error, !ok); };
$("btn-learn").onclick = async () => { say("learning…"); const {ok, data} = await api("api/learn", {}); say(ok ? data.message : data.error, !ok); if (ok) loadQueue(); };
loadQueue();
