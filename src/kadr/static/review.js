// kadr review: keyboard-first checking of camera-trap registrations.
// Every string from the server is set with textContent (never parsed as HTML).
"use strict";
const cfg = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const state = {queue: [], idx: 0, photo: 0, details: new Map(), selected: new Set(),
               classes: [], mode: null, typed: "", chain: null, decidedAt: [],
               suggestion: -1, newName: null};

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
// Times from the camera's own metadata (kadr.traps.tables.DATED_TIME_SOURCES).
const DATED = ["exif", "creation_time", "quicktime_creationdate", "reviewer"];
const photoUrl = (pid, size) => `${cfg.base}photo/${size}/${pid}`;
// Back to the review keys: focus leaves a field, a filter or a button.
const home = () => $("unit").focus({preventScroll: true});

function filters() {
  const f = new FormData($("filters")), q = new URLSearchParams();
  for (const [k, v] of f) if (v !== "") q.set(k, v);
  return q;
}
async function loadQueue(focusIds) {
  const {ok, data} = await api("api/queue?" + filters());
  if (!ok) return say(data.error, true);
  state.queue = data.units; state.details.clear();
  addClasses(data.classes);
  fillSelect($("filters").camera, data.cameras); fillSelect($("filters").cls, state.classes);
  showProgress(data);
  let i = 0;
  if (focusIds) { const k = state.queue.findIndex((u) => focusIds.includes(u.id)); if (k >= 0) i = k; }
  renderQueue(); return show(Math.min(i, Math.max(0, state.queue.length - 1)));
}
function addClasses(names) {
  for (const c of names) if (c && !state.classes.includes(c)) state.classes.push(c);
}
// Reviewed and left within the filters, and when the reviewer will be done at their pace.
function showProgress(data) {
  $("total").textContent = `${data.total} registration(s) listed` + (data.total > data.units.length && data.units.length ? `, first ${data.units.length} shown` : "");
  let text = `${data.reviewed} reviewed, ${data.left} left`;
  const t = state.decidedAt, gaps = [];
  for (let i = 1; i < t.length; i++) { const g = (t[i] - t[i - 1]) / 1000; if (g < 300) gaps.push(g); }
  if (gaps.length >= 2 && data.left) {
    gaps.sort((a, b) => a - b);
    const pace = gaps[Math.floor(gaps.length / 2)], min = Math.ceil(pace * data.left / 60);
    text += `; about ${min < 120 ? min + " min" : (min / 60).toFixed(1) + " h"} at your pace (${pace.toFixed(1)} s each)`;
  } else if (data.left) text += "; time to finish shown after a few decisions";
  $("progress").textContent = text;
  const probs = data.problems || [];
  $("problems").hidden = !probs.length;
  $("problems").replaceChildren(...probs.map((p) => el("div", "⚠ " + p)));
}
async function refreshProgress() {
  const q = filters(); q.set("limit", "0");
  const {ok, data} = await api("api/queue?" + q);
  if (ok) { showProgress(Object.assign(data, {units: state.queue})); addClasses(data.classes); }
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
  $("empty-queue").hidden = !!u; $("unit-head").hidden = !u; $("work").hidden = !u;
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
  $("u-why").textContent = d.why ? "Why: " + d.why : "";
  $("u-flags").replaceChildren(...d.flags.map((f) => el("div", "⚠ " + f)));
  $("strip").replaceChildren(...d.photo_list.map((p, k) => {
    const li = el("li"); const img = el("img"); img.src = photoUrl(p.id, "thumb"); img.alt = p.name; img.loading = "lazy";
    li.append(img, el("span", p.time ? p.time.slice(11) : "no time", ["exif", "reviewer"].includes(p.time_source) ? "" : "mtime"));
    li.onclick = () => showPhoto(k); return li;
  }));
  renderChoices();
  $("neighbours").replaceChildren(...d.neighbours.map((n) => el("li", `${n.start || "no time"}  ${n.cls} ×${n.count}` + (n.reviewed ? " ✓" : ""), n.here ? "here" : "")));
  showPhoto(Math.min(state.photo, d.photo_list.length - 1));
}
// The machine's alternatives first (with their probabilities), then every other class of
// the project and every name a reviewer typed; 1-9 pick the first nine.
function choiceList() {
  const d = state.current, out = [];
  if (!d) return out;
  for (const [c] of d.alternatives) if (!out.includes(c)) out.push(c);
  for (const c of [...cfg.project, ...state.classes]) if (!out.includes(c)) out.push(c);
  return out;
}
function renderChoices() {
  const d = state.current; if (!d) return;
  $("choices").replaceChildren(...choiceList().map((c, k) => {
    const alt = d.alternatives.find((a) => a[0] === c);
    const li = el("li", (k < 9 ? `${k + 1}. ` : "· ") + c + (alt ? ` (${alt[1].toFixed(2)})` : ""));
    li.onclick = () => label(c); return li;
  }));
}
function showPhoto(k) {
  const d = state.current; if (!d || k < 0 || k >= d.photo_list.length) return;
  state.photo = k; const p = d.photo_list[k];
  const big = $("big");
  big.onload = () => drawBoxes(p);
  big.src = photoUrl(p.id, "display"); big.alt = p.name;
  if (big.complete && big.naturalWidth) drawBoxes(p);
  showClip(p);
  $("photo-info").textContent = `${k + 1}/${d.photo_list.length}  ${p.key}  ${p.time || "no time"}` +
    (DATED.includes(p.time_source) ? "" : `  (time from ${p.time_source}, not the camera's metadata)`) + (p.cls ? `  machine: ${p.cls}` : "");
  [...$("strip").children].forEach((li, i) => li.classList.toggle("here", i === k));
}
// A clip's sampled frame: the clip plays below it, from that frame on (keys stay with the
// review: the player is reached by mouse or Tab).
function showClip(p) {
  const video = $("clip");
  if (!p.clip) { video.hidden = true; video.removeAttribute("src"); video.load(); return; }
  const src = `${cfg.base}clip/${p.id}`;
  if (video.dataset.clip !== p.clip) { video.dataset.clip = p.clip; video.src = src; }
  video.hidden = false;
  const seek = () => { video.currentTime = p.offset; };
  if (video.readyState >= 1) seek(); else video.addEventListener("loadedmetadata", seek, {once: true});
}
// Boxes in the photo's own pixels: the overlay's viewBox is the photo's size and it is
// fitted like the image (contain, centred), so letterbox bars never shift a box.
function drawBoxes(p) {
  const big = $("big"), svg = $("boxes"), w = big.naturalWidth, h = big.naturalHeight;
  if (!w || !h) return;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`); svg.replaceChildren();
  for (const b of p.boxes) {
    const r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    const [x, y, bw, bh] = b.bbox;
    r.setAttribute("x", x * w); r.setAttribute("y", y * h); r.setAttribute("width", bw * w); r.setAttribute("height", bh * h);
    r.setAttribute("vector-effect", "non-scaling-stroke");
    const t = document.createElementNS("http://www.w3.org/2000/svg", "title"); t.textContent = `${b.label} ${b.conf.toFixed(2)}`; r.append(t);
    svg.append(r);
  }
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
function saved(data) {
  state.decidedAt.push(Date.now());
  const n = data.saved.length, said = data.said || [];
  if (n <= 3) say(`saved #${data.saved.join(", #")}: ${said.join("; ")}`);
  else {  // a bulk decision: how many, and what they were
    const kinds = {};
    for (const s of said) { const w = s.split(" (")[0]; kinds[w] = (kinds[w] || 0) + 1; }
    say(`saved ${n} decisions #${data.saved[0]}–#${data.saved[n - 1]}: ` +
        Object.entries(kinds).map(([w, k]) => k > 1 ? `${w} (${k} registrations)` : w).join("; "));
  }
  $("status").dataset.saved = data.saved.join(",");
}
// refs: a function giving the units at the moment the action runs (default: the current one).
function decide(action, extra, refs, advance) {
  return enqueue(async () => {
    const units = refs ? refs() : (cur() ? [ref(cur())] : []);
    if (!units || !units.length) return;
    const body = Object.assign({action, units}, typeof extra === "function" ? extra() : extra || {});
    const {ok, status, data} = await api("api/decide", body);
    if (status === 409) return conflict(data, action, body, advance);
    if (!ok) return say(data.error, true);
    $("conflict").hidden = true;
    if (body.cls) addClasses([body.cls]);
    state.details.clear();  // neighbours and "previous" of cached registrations changed
    await replaceUnits(units.map((r) => r.id), data.units, advance);
    saved(data);
    refreshProgress();
  });
}
function replaceUnits(oldIds, fresh, advance) {
  let pos = Math.min(...oldIds.map((id) => state.queue.findIndex((u) => u.id === id)).filter((i) => i >= 0), state.idx);
  // Moving on, units the filter hides leave the list; staying (count, split), they remain
  // until the reviewer moves on, so that + + + counts up the same registration.
  const want = $("filters").reviewed.value;
  const keep = advance ? fresh.filter((u) => want === "all" || (want === "yes") === u.reviewed) : fresh;
  const freshIds = fresh.map((u) => u.id);
  state.queue = state.queue.filter((u) => !oldIds.includes(u.id) && !freshIds.includes(u.id));
  pos = Math.min(pos, state.queue.length);
  state.queue.splice(pos, 0, ...keep);
  oldIds.forEach((id) => state.selected.delete(id));
  return show(advance ? pos + keep.length : pos);
}
// Another tab or reviewer changed what this page showed: say who did what, offer the
// current state or this action again on the registration as it is now.
function conflict(data, action, body, advance) {
  const box = $("conflict"); box.hidden = false; box.replaceChildren();
  box.append(el("span", "Conflict, nothing saved: " + data.conflict.map((c) => c.message).join("; ") + ". "));
  const reload = el("button", "show the current state"); reload.type = "button";
  // The prompt stays until the current state is drawn: never the stale one without it.
  reload.onclick = () => loadQueue(data.conflict.map((c) => c.now ? c.now.id : c.id)).then(() => { box.hidden = true; home(); });
  box.append(reload);
  const now = data.conflict.filter((c) => c.now).map((c) => c.now);
  if (now.length) {
    const mine = el("button", "apply mine anyway"); mine.type = "button";
    const {units: _u, action: _a, ...extra} = body;
    mine.onclick = () => {
      box.hidden = true;
      state.queue = state.queue.map((u) => { const c = data.conflict.find((x) => x.id === u.id); return c && c.now ? c.now : u; });
      decide(action, extra, () => now.map(ref), advance).then(home);
    };
    box.append(" ", mine);
  }
  say("conflict: nothing saved", true);
  reload.focus();
}
const accept = () => state.selected.size ? bulk("accept") : decide("accept", {}, null, true);
function label(cls) {
  if (!cls) return;
  return state.selected.size ? bulk("label", {cls}) : decide("label", {cls}, null, true);
}
function bulk(action, extra) {
  const chosen = () => state.queue.filter((u) => state.selected.has(u.id)).map(ref);
  return decide(action, extra, chosen, true).then(() => { state.selected.clear(); renderQueue(); });
}
const setCount = (n) => Number.isInteger(n) && n >= 0 ? decide("count", {count: n}, null, false) : say("a count is a whole number", true);
const countBy = (delta) => decide("count", () => ({count: Math.max(0, (cur()?.count || 0) + delta)}), null, false);
function split() {
  const d = state.current; if (!d) return;
  if (state.photo === 0) return say("move to the photo where the second registration starts (→), then x", true);
  decide("split", {at: d.photo_list[state.photo].id}, null, false);
}
// The server merges with the registration before this one as it is now.
const merge = () => state.current && decide("merge", {}, null, false);
function undo() {
  return enqueue(async () => {
    const {ok, data} = await api("api/undo", {});
    if (!ok) return say(data.error, true);
    state.decidedAt.pop();
    await loadQueue(data.units.map((u) => u.id));
    say(data.said.join("; "));
  });
}
// More like this: the unreviewed registrations nearest to this one, selected for one
// bulk decision.
async function moreLike() {
  const u = cur(); if (!u) return;
  const {ok, data} = await api("api/like/" + encodeURIComponent(u.id) + "?" + filters());
  if (!ok) return say(data.error, true);
  const have = new Set(state.queue.map((x) => x.id));
  const extra = data.units.filter((x) => !have.has(x.id));
  state.queue.splice(state.idx + 1, 0, ...extra);
  state.selected = new Set([u.id, ...data.units.map((x) => x.id)]);
  renderQueue();
  say(`selected ${state.selected.size} that look alike: Enter accepts them all, a number or s names them, Esc clears`);
}
function toggleSelect(id) { state.selected.has(id) ? state.selected.delete(id) : state.selected.add(id); renderQueue(); }
function clockDialog() {
  const d = state.current; if (!d) return;
  const p = d.photo_list[state.photo], f = $("clock-form");
  $("clock-camera").textContent = d.camera; $("clock-photo").textContent = `${p.name}, shown as ${p.time || "no time"}`;
  f.reset();  // every opening starts from the same state, never the last one's ticks
  f.true_time.value = p.time || ""; $("clock-error").textContent = "";
  $("clock-dialog").showModal(); f.true_time.focus(); f.true_time.select();
  f.onsubmit = async (ev) => {
    ev.preventDefault();
    if (ev.submitter && ev.submitter.value === "cancel") { $("clock-dialog").close(); return home(); }
    const body = {camera: d.camera, photo: p.id, from_photo_on: f.from_photo_on.checked};
    if (f.how.value === "true") body.true_time = f.true_time.value; else body.offset_seconds = 60 * Number(f.offset.value);
    const {ok, data} = await api("api/clock", body);
    if (!ok) { $("clock-error").textContent = data.error; return; }  // the dialog stays open
    $("clock-dialog").close();
    saved(data);
    await loadQueue([d.id]);
    home();
  };
}

// ------------------------------------------------------------------ species type-ahead
// Suggestions are the project's classes and typed names containing the text (prefix
// matches first); ↓/↑ pick one, Enter sets it. A name nobody used yet takes a second Enter.
function suggestions(text) {
  const t = text.trim().toLowerCase(); if (!t) return [];
  const all = choiceList().filter((c) => c.toLowerCase().includes(t));
  return [...all.filter((c) => c.toLowerCase().startsWith(t)), ...all.filter((c) => !c.toLowerCase().startsWith(t))].slice(0, 8);
}
function renderSuggest() {
  const input = $("species"), list = suggestions(input.value), box = $("suggest");
  if (state.suggestion >= list.length) state.suggestion = list.length - 1;
  box.replaceChildren(...list.map((c, k) => {
    const li = el("li", c); li.id = `suggest-${k}`; li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(k === state.suggestion));
    li.onmousedown = (ev) => { ev.preventDefault(); takeSpecies(c); };
    return li;
  }));
  box.hidden = !list.length; input.setAttribute("aria-expanded", String(!!list.length));
  if (state.suggestion >= 0) input.setAttribute("aria-activedescendant", `suggest-${state.suggestion}`);
  else input.removeAttribute("aria-activedescendant");
  return list;
}
function closeSpecies() {
  const input = $("species"); input.value = ""; state.suggestion = -1; state.newName = null;
  $("species-note").textContent = ""; renderSuggest(); home();
}
function takeSpecies(name) { closeSpecies(); label(name); }
$("species").addEventListener("input", () => { state.suggestion = -1; state.newName = null; $("species-note").textContent = ""; renderSuggest(); });
$("species").addEventListener("keydown", (ev) => {
  const list = suggestions(ev.target.value), k = ev.key;
  if (k === "ArrowDown" || k === "ArrowUp") {
    if (!list.length) state.suggestion = -1;
    else if (k === "ArrowDown") state.suggestion = (state.suggestion + 1) % list.length;
    else state.suggestion = state.suggestion <= 0 ? list.length - 1 : state.suggestion - 1;
    renderSuggest();
  } else if (k === "Enter") {
    const typed = ev.target.value.trim();
    const known = [...cfg.project, ...state.classes, ...choiceList()].find((c) => c.toLowerCase() === typed.toLowerCase());
    if (state.suggestion >= 0 && list[state.suggestion]) takeSpecies(list[state.suggestion]);
    else if (!typed) closeSpecies();
    else if (known) takeSpecies(known);
    else if (state.newName === typed) takeSpecies(typed);
    else {
      state.newName = typed;
      $("species-note").textContent = `“${typed}” is a new species: Enter again to add it` + (list.length ? ", or ↓ to pick a suggestion" : "");
    }
  } else if (k === "Escape") closeSpecies();
  else return;
  ev.preventDefault(); ev.stopPropagation();
});
$("species-form").onsubmit = (ev) => ev.preventDefault();

// ------------------------------------------------------------------ keys
document.addEventListener("keydown", (ev) => {
  const t = ev.target, k = ev.key;
  if ($("clock-dialog").open) return;
  if (t.tagName === "INPUT" || t.tagName === "SELECT" || t.tagName === "TEXTAREA") {
    if (k === "Escape") { home(); ev.preventDefault(); }
    return;
  }
  // A focused button does what it says on Enter and space, never the review action.
  if (t.tagName === "BUTTON" && (k === "Enter" || k === " ")) return;
  if (ev.altKey || (ev.ctrlKey && k !== "z") || ev.metaKey && k !== "z") return;
  if (state.mode === "count") {
    if (/^[0-9]$/.test(k)) { state.typed += k; say(`count: ${state.typed}`); }
    else if (k === "Backspace") { state.typed = state.typed.slice(0, -1); say(`count: ${state.typed}`); }
    else if (k === "Enter") { state.mode = null; setCount(parseInt(state.typed || "0", 10)); }
    else if (k === "Escape") { state.mode = null; say(""); }
    ev.preventDefault(); return;
  }
  if (k === "?") $("help").hidden = !$("help").hidden;
  else if (k === "Escape") { $("help").hidden = true; state.selected.clear(); renderQueue(); home(); }
  else if (k === "Enter") accept();
  else if (/^[1-9]$/.test(k)) label(choiceList()[Number(k) - 1]);
  else if (k === "0" || k === "e") decide("empty", {}, null, true);
  else if (k === "+" || k === "=") countBy(1);
  else if (k === "-") countBy(-1);
  else if (k === "c") { state.mode = "count"; state.typed = ""; say("count: type digits, Enter"); }
  else if (k === "s") { $("species").focus(); renderSuggest(); }
  else if (k === "ArrowRight") showPhoto(state.photo + 1);
  else if (k === "ArrowLeft") showPhoto(state.photo - 1);
  else if (k === "j" || k === "ArrowDown") show(Math.min(state.idx + 1, state.queue.length));
  else if (k === "k" || k === "ArrowUp") show(Math.max(state.idx - 1, 0));
  else if (k === "x") split();
  else if (k === "m") merge();
  else if (k === "l") moreLike();
  else if (k === "u" || (k === "z" && (ev.ctrlKey || ev.metaKey))) undo();
  else if (k === " ") { const u = state.queue[state.idx]; if (u) toggleSelect(u.id); }
  else if (k === "A") { state.queue.forEach((u) => state.selected.add(u.id)); renderQueue(); }
  else if (k === "t") clockDialog();
  else return;
  ev.preventDefault();
});
// A filter changed (by keyboard too) applies at once and hands the keys back to the review.
$("filters").onchange = () => loadQueue().then(home);
$("filters").onsubmit = (ev) => { ev.preventDefault(); loadQueue().then(home); };
$("btn-help").onclick = () => { $("help").hidden = !$("help").hidden; };
$("btn-select-all").onclick = () => { state.queue.forEach((u) => state.selected.add(u.id)); renderQueue(); };
$("btn-bulk-accept").onclick = () => bulk("accept");
$("actions").onclick = (ev) => {
  const a = ev.target.dataset && ev.target.dataset.act; if (!a) return;
  ({accept, empty: () => decide("empty", {}, null, true), plus: () => countBy(1), minus: () => countBy(-1), split, merge, undo, clock: clockDialog, like: moreLike,
    count: () => { state.mode = "count"; state.typed = ""; say("count: type digits, Enter"); home(); }})[a]();
};
$("btn-export").onclick = async () => { say("exporting…"); const {ok, data} = await api("api/export", {}); say(ok ? `exported ${data.registrations} registrations (${data.reviewed} reviewed)` : data.error, !ok); };
$("btn-learn").onclick = async () => { say("learning…"); const {ok, data} = await api("api/learn", {}); say(ok ? data.message : data.error, !ok); if (ok) loadQueue(); };
loadQueue().then(home);
