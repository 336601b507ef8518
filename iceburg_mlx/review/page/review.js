// The blind review page: fetches one item at a time for this rater and saves each judgment.
// Texts are set with textContent only (never parsed as HTML).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const SIDES = ["1", "2"];
  let session = null;   // GET api/session
  let auth = null;      // {name, token}
  let current = null;   // the item on screen
  let cells = [];       // [{side, key}] in keyboard order: criterion by criterion, Response 1 then 2
  let cursor = 0;
  let busy = false;

  const storeKey = () => "iceburg-review:" + session.session;

  async function api(method, path, body) {
    const headers = { "X-Rater": auth.name };
    if (auth.token) headers.Authorization = "Bearer " + auth.token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, cache: "no-store",
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (!r.ok) throw new Error((data && data.error) || ("the server answered " + r.status));
    return data;
  }

  function show(id) {
    for (const s of ["login", "item", "done"]) $(s).hidden = s !== id;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function buildRubric() {
    const body = $("rubric").tBodies[0];
    const [lo, hi] = session.scale;
    cells = [];
    for (const c of session.rubric) {
      const tr = el("tr");
      const name = el("td", "crit", c.label);
      name.appendChild(el("small", "", c.help));
      tr.appendChild(name);
      for (const side of SIDES) {
        const td = el("td", "cell");
        td.dataset.cell = side + "-" + c.key;
        for (let v = lo; v <= hi; v++) {
          const label = el("label", "pill");
          label.dataset.v = String(v);
          const input = el("input");
          input.type = "radio";
          input.name = "s-" + side + "-" + c.key;
          input.value = String(v);
          input.setAttribute("aria-label", `Response ${side}, ${c.label}: ${v}`);
          label.appendChild(input);
          label.appendChild(el("span", "", String(v)));
          td.appendChild(label);
        }
        const index = cells.length;
        td.addEventListener("click", () => { cursor = index; highlight(); });
        tr.appendChild(td);
        cells.push({ side, key: c.key });
      }
      body.appendChild(tr);
    }
  }

  function highlight() {
    document.querySelectorAll("td.cell").forEach((td) => td.classList.remove("active"));
    const c = cells[cursor];
    if (c) document.querySelector(`td.cell[data-cell="${c.side}-${c.key}"]`).classList.add("active");
  }

  function setCell(index, value) {
    const c = cells[index];
    const input = document.querySelector(`input[name="s-${c.side}-${c.key}"][value="${value}"]`);
    if (input) input.checked = true;
  }

  function choose(value) {
    document.querySelector(`input[name="choice"][value="${value}"]`).checked = true;
  }

  function progress(p) {
    $("progress").hidden = false;
    $("bar-fill").style.width = (p.total ? (100 * p.done) / p.total : 0) + "%";
    $("progress-text").textContent = `${p.done} of ${p.total} rated`;
  }

  function resetForm() {
    $("judge").reset();
    $("form-error").textContent = "";
  }

  function fill(j) {
    if (!j) return;
    for (const side of SIDES) {
      for (const [key, v] of Object.entries(j.scores[side] || {})) {
        const input = document.querySelector(`input[name="s-${side}-${key}"][value="${v}"]`);
        if (input) input.checked = true;
      }
    }
    choose(j.choice);
    $("comment").value = j.comment || "";
  }

  function firstEmpty() {
    const i = cells.findIndex((c) => !document.querySelector(`input[name="s-${c.side}-${c.key}"]:checked`));
    return i < 0 ? 0 : i;
  }

  async function load(pos) {
    const it = await api("GET", "api/items/" + pos);
    current = it;
    $("pos").textContent = `${pos + 1} of ${it.total}`;
    $("system-box").hidden = !it.system;
    $("system").textContent = it.system || "";
    const prompt = $("prompt");
    prompt.replaceChildren();
    for (const m of it.prompt) {
      const div = el("div", "msg");
      div.appendChild(el("span", "role", m.role === "user" ? "User" : m.role === "assistant" ? "Earlier answer" : m.role));
      div.appendChild(document.createTextNode(m.content));
      prompt.appendChild(div);
    }
    $("text-1").textContent = it.responses[0];
    $("text-2").textContent = it.responses[1];
    $("text-1").scrollTop = 0;
    $("text-2").scrollTop = 0;
    resetForm();
    fill(it.judgment);
    cursor = firstEmpty();
    highlight();
    $("prev").disabled = pos === 0;
    progress(it);
    show("item");
    window.scrollTo(0, 0);
  }

  function finished(p) {
    progress(p);
    $("done-text").textContent = `You have rated all ${p.total} items. Thank you! You can close this page.`;
    current = { pos: p.total };
    show("done");
  }

  async function goTo(p) {
    if (p.next === null) finished(p);
    else await load(p.next);
  }

  function collect() {
    const scores = { 1: {}, 2: {} };
    const missing = [];
    for (const c of session.rubric) {
      for (const side of SIDES) {
        const input = document.querySelector(`input[name="s-${side}-${c.key}"]:checked`);
        if (input) scores[side][c.key] = Number(input.value);
        else missing.push(`${c.label} (Response ${side})`);
      }
    }
    const choice = document.querySelector('input[name="choice"]:checked');
    if (missing.length) return { error: "Still to score: " + missing.join(", ") };
    if (!choice) return { error: "Choose Response 1, tie or Response 2." };
    return { body: { choice: choice.value, scores, comment: $("comment").value } };
  }

  async function save() {
    if (busy || !current) return;
    const v = collect();
    if (v.error) { $("form-error").textContent = v.error; return; }
    busy = true;
    $("save").disabled = true;
    try {
      await goTo(await api("PUT", "api/items/" + current.pos, v.body));
    } catch (e) {
      $("form-error").textContent = e.message;
    } finally {
      busy = false;
      $("save").disabled = false;
    }
  }

  async function previous() {
    if (busy || !current || current.pos === 0) return;
    busy = true;
    try { await load(current.pos - 1); } catch (e) { $("form-error").textContent = e.message; } finally { busy = false; }
  }

  async function start(a) {
    auth = a;
    let p;
    try {
      p = await api("GET", "api/progress");
    } catch (e) {
      auth = null;
      $("login-error").textContent = e.message;
      show("login");
      return;
    }
    localStorage.setItem(storeKey(), JSON.stringify(a));
    $("login-error").textContent = "";
    $("who").textContent = "Rater: " + a.name;
    $("switch").hidden = false;
    await goTo(p);
  }

  function onKey(e) {
    if ($("item").hidden || e.altKey || e.metaKey) return;
    if (e.target === $("comment")) {
      if (e.key === "Escape") { e.preventDefault(); $("comment").blur(); }
      else if (e.key === "Enter" && e.ctrlKey) { e.preventDefault(); save(); }
      return;
    }
    if (e.ctrlKey) return;
    let handled = true;
    if (/^[1-5]$/.test(e.key)) {
      setCell(cursor, e.key);
      cursor = Math.min(cursor + 1, cells.length - 1);
      highlight();
    } else if (e.key === "ArrowDown") { cursor = Math.min(cursor + 1, cells.length - 1); highlight(); }
    else if (e.key === "ArrowUp") { cursor = Math.max(cursor - 1, 0); highlight(); }
    else if (e.key === "ArrowLeft") choose("1");
    else if (e.key === "ArrowRight") choose("2");
    else if (e.key === "t" || e.key === "T") choose("tie");
    else if (e.key === "c" || e.key === "C") $("comment").focus();
    else if (e.key === "p" || e.key === "P") previous();
    else if (e.key === "Enter") save();
    else handled = false;
    if (handled) e.preventDefault();
  }

  async function init() {
    session = await (await fetch("api/session", { cache: "no-store" })).json();
    $("bench").textContent = `${session.bench} · ${session.items} items`;
    $("token-label").hidden = !session.tokens;
    buildRubric();
    $("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      start({ name: $("name").value.trim(), token: $("token").value.trim() });
    });
    $("judge").addEventListener("submit", (e) => { e.preventDefault(); save(); });
    $("prev").addEventListener("click", previous);
    $("back").addEventListener("click", () => load(session.items - 1));
    $("switch").addEventListener("click", () => {
      localStorage.removeItem(storeKey());
      auth = null;
      current = null;
      $("who").textContent = "";
      $("switch").hidden = true;
      $("progress").hidden = true;
      show("login");
    });
    document.addEventListener("keydown", onKey);
    // An invitation link carries #rater=NAME&token=TOKEN (a fragment never reaches the server's logs).
    const frag = new URLSearchParams(location.hash.slice(1));
    let saved = null;
    if (frag.get("rater")) {
      saved = { name: frag.get("rater"), token: frag.get("token") || "" };
      history.replaceState(null, "", location.pathname + location.search);
    } else {
      try { saved = JSON.parse(localStorage.getItem(storeKey()) || "null"); } catch (e) { saved = null; }
    }
    if (saved && saved.name) {
      $("name").value = saved.name;
      $("token").value = saved.token || "";
      await start(saved);
    } else {
      show("login");
    }
  }

  init().catch((e) => { document.body.textContent = "Cannot load the review session: " + e.message; });
})();
