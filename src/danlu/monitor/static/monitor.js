// danlu monitor page: the run's state from /api/state, then live updates by server-sent
// events (/api/events), drawn on canvases; control through POST /api/control.
// Plain JS, no dependencies, nothing loaded from elsewhere.
"use strict";

(() => {
  const MAX_POINTS = 4000;  // the curve keeps its shape past this by dropping every other point
  const PALETTE = ["#2563eb", "#e6194b", "#3cb44b", "#f58231", "#911eb4", "#42d4f4",
    "#f032e6", "#9a6324", "#469990", "#808000"];
  const OVER = ["finished", "stopped", "crashed"];

  const $ = (id) => document.getElementById(id);
  const st = {
    points: [], epochs: [], state: {}, history: [], es: null, ended: false,
    drawQueued: false, retry: null, disarm: null,
  };

  // ---- formatting ----------------------------------------------------------------------
  const isNum = (v) => typeof v === "number" && Number.isFinite(v);
  const num = (v, d = 4) => (isNum(v) ? Number(v.toPrecision(d)).toString() : "–");
  const sci = (v) => (isNum(v) ? v.toExponential(2) : "–");
  function duration(s) {
    if (!isNum(s)) return "–";
    s = Math.round(s);
    if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${s}s`;
  }
  function bytes(n) {
    if (!isNum(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  // ---- talking to the monitor ------------------------------------------------------------
  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const resp = await fetch(path, { credentials: "same-origin", ...options });
    if (resp.status === 401) { showToken(); throw new Unauthorized("unauthorized"); }
    return resp;
  }

  async function load() {
    clearTimeout(st.retry);
    try {
      const resp = await api("api/state");
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      const snap = await resp.json();
      applySnapshot(snap);
      if (!(OVER.includes(snap.state.status) && st.ended)) connect(snap.seq);
    } catch (e) {
      if (!(e instanceof Unauthorized)) st.retry = setTimeout(load, 3000);
    }
  }

  function connect(since) {
    if (st.es) st.es.close();
    const es = new EventSource(`api/events?since=${since}`);
    st.es = es;
    const on = (kind, fn) => es.addEventListener(kind, (ev) => fn(JSON.parse(ev.data)));
    on("step", onStep);
    on("state", mergeState);
    on("epoch", onEpoch);
    on("eval", renderValidation);
    on("control", (rec) => addHistory(rec, true));
    on("event", (rec) => addHistory(rec, true));
    on("reset", () => { es.close(); load(); });
    on("end", () => { st.ended = true; es.close(); });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED && !st.ended) {
        st.retry = setTimeout(load, 3000);
      }
    };
  }

  // ---- state -----------------------------------------------------------------------------
  function applySnapshot(snap) {
    st.points = snap.curve || [];
    st.epochs = snap.epochs || [];
    st.state = snap.state || {};
    st.history = [];
    $("history").replaceChildren();
    for (const rec of snap.history || []) addHistory(rec, false);
    if (snap.validation) renderValidation(snap.validation);
    renderStats();
    queueDraw();
  }

  function onStep(p) {
    st.points.push(p);
    if (st.points.length > MAX_POINTS) st.points = st.points.filter((_, i) => i % 2 === 1);
    mergeState({
      step: p.step, epoch: p.epoch, lr: p.lr, loss: p.losses && p.losses.loss,
      eta: p.eta, ips: p.ips, elapsed: p.t,
    });
    queueDraw();
  }

  function onEpoch(row) {
    st.epochs.push(row);
    queueDraw();
  }

  function mergeState(s) {
    Object.assign(st.state, s);
    renderStats();
  }

  function renderStats() {
    const s = st.state;
    $("run-name").textContent = s.run || "";
    const status = s.status || "starting";
    $("status").textContent = status;
    $("status").dataset.state = status;
    document.title = `${status} · ${s.run || "run"} · danlu monitor`;
    $("epoch").textContent = s.epoch != null ? `${s.epoch}/${s.total_epochs ?? "?"}` : "–";
    $("step").textContent = s.step != null ? `${s.step}/${s.total_steps ?? "?"}` : "–";
    $("loss").textContent = num(s.loss);
    $("lr").textContent = sci(s.lr);
    $("eta").textContent = OVER.includes(status) ? "–" : duration(s.eta);
    $("ips").textContent = num(s.ips, 3);
    $("elapsed").textContent = duration(s.elapsed);
    const mem = s.memory || {};
    $("mem-cpu").textContent = bytes((mem.cpu || {}).rss ?? (mem.cpu || {}).peak);
    $("mem-gpu").textContent = mem.gpu ? `${bytes(mem.gpu.allocated)} / ${bytes(mem.gpu.total)}` : "–";
    $("eval-every").textContent = s.eval_every ?? "–";
    const info = [s.model, s.device && `on ${s.device}`, s.world_size > 1 && `${s.world_size} processes`,
      s.batch && `batch ${s.batch}`, s.img_size && `${s.img_size} px`].filter(Boolean);
    $("run-info").textContent = info.join(", ");
    const live = !OVER.includes(status) && status !== "starting";
    $("btn-pause").disabled = !live || status === "paused" || status === "stopping";
    $("btn-resume").disabled = !live || status !== "paused";
    for (const id of ["btn-save", "btn-stop"]) $(id).disabled = !live || status === "stopping";
    for (const id of ["lr-form", "eval-form"]) {
      for (const el of $(id).elements) el.disabled = !live;
    }
  }

  function renderValidation(v) {
    $("val-epoch").textContent = `epoch ${v.epoch}, step ${v.step}${v.protocol ? `, ${v.protocol}` : ""}`;
    const metrics = v.metrics || {};
    const shown = ["AP", "AP50", "AP75", "mAP", "AR100"].filter((k) => isNum(metrics[k]));
    $("val-metrics").replaceChildren(...shown.map((k) => {
      const el = document.createElement("span");
      el.textContent = `${k} ${metrics[k].toFixed(3)}`;
      return el;
    }));
    const rows = Object.entries(v.per_class || {}).map(([name, ap]) => {
      const tr = document.createElement("tr");
      for (const [text, cls] of [[name, ""], [isNum(ap) ? ap.toFixed(3) : "–", "num"],
        [String((v.num_gt || {})[name] ?? ""), "num"]]) {
        const td = document.createElement("td");
        td.textContent = text;
        if (cls) td.className = cls;
        tr.append(td);
      }
      return tr;
    });
    $("val-table").replaceChildren(...rows);
    $("val-note").hidden = true;
    if (v.samples != null) {
      const img = $("samples");
      img.src = `api/samples.png?v=${v.samples}`;
      img.hidden = false;
      $("samples-note").textContent = `Predictions after step ${v.samples}.`;
    }
  }

  function describe(rec) {
    if (rec.event === "control") {
      const what = rec.action === "set" ? `set ${rec.key}=${rec.value}` : rec.action;
      return [`${what} by ${rec.source}`, "kind-control"];
    }
    const extra = ["reason", "path", "metric", "fitness", "error", "command", "user", "host"]
      .filter((k) => rec[k] != null).map((k) => `${k} ${isNum(rec[k]) ? num(rec[k]) : rec[k]}`);
    const cls = rec.event === "error" ? "kind-error"
      : rec.event === "chat_refused" || rec.event === "control_refused" ? "kind-refused" : "";
    return [[rec.event, ...extra].join(" · "), cls];
  }

  function addHistory(rec, live) {
    st.history.push(rec);
    if (st.history.length > 500) st.history.shift();
    const li = document.createElement("li");
    const t = document.createElement("time");
    t.textContent = rec.time ? clock(rec.time) : "";
    const [text, cls] = describe(rec);
    const span = document.createElement("span");
    span.textContent = `${text}${rec.step != null ? ` (step ${rec.step})` : ""}`;
    if (cls) span.className = cls;
    li.append(t, span);
    li.dataset.event = rec.event;
    const list = $("history");
    list.prepend(li);
    while (list.children.length > 500) list.lastChild.remove();
    if (live && rec.event === "end") st.ended = true;
  }

  // ---- charts ----------------------------------------------------------------------------
  function queueDraw() {
    if (st.drawQueued) return;
    st.drawQueued = true;
    requestAnimationFrame(() => {
      st.drawQueued = false;
      drawLoss();
      drawMetrics();
    });
  }

  function drawLoss() {
    const names = [];
    for (const p of st.points) {
      for (const k of Object.keys(p.losses || {})) if (!names.includes(k)) names.push(k);
    }
    names.sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : 0));
    const series = names.map((name, i) => ({
      name, color: PALETTE[i % PALETTE.length], width: name === "loss" ? 2 : 1,
      xs: st.points.map((p) => p.step), ys: st.points.map((p) => (p.losses || {})[name]),
    }));
    const canvas = $("loss-chart");
    drawChart(canvas, series, "step");
    canvas.dataset.points = String(st.points.length);
    legend("loss-legend", series);
  }

  function drawMetrics() {
    const keys = ["AP", "AP50", "mAP"].filter((k) => st.epochs.some((r) => isNum(r[k])));
    const series = keys.map((k, i) => ({
      name: `val ${k}`, color: PALETTE[(i + 2) % PALETTE.length], width: 2, dots: true,
      xs: st.epochs.map((r) => r.epoch), ys: st.epochs.map((r) => r[k]),
    }));
    const canvas = $("metric-chart");
    drawChart(canvas, series, "epoch");
    canvas.dataset.points = String(st.epochs.length);
    legend("metric-legend", series);
  }

  function legend(id, series) {
    $(id).replaceChildren(...series.map((s) => {
      const el = document.createElement("span");
      el.textContent = s.name;
      el.style.setProperty("--swatch", s.color);
      return el;
    }));
  }

  function drawChart(canvas, series, xLabel) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 300;
    const h = canvas.clientHeight || 200;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const fg = getComputedStyle(document.body).color;
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = fg;
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const s of series) {
      s.xs.forEach((x, i) => {
        const y = s.ys[i];
        if (!isNum(x) || !isNum(y)) return;
        x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y);
      });
    }
    if (!isNum(x0)) {
      ctx.globalAlpha = 0.6;
      ctx.fillText("waiting for data…", 12, h / 2);
      ctx.globalAlpha = 1;
      return;
    }
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const padY = (y1 - y0) * 0.05;
    y0 -= padY; y1 += padY;
    const L = 52, R = 10, T = 8, B = 22;
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (w - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
    ctx.strokeStyle = fg;
    ctx.globalAlpha = 0.15;
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i += 1) {
      const y = T + (i / 4) * (h - T - B);
      ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(w - R, y); ctx.stroke();
    }
    ctx.globalAlpha = 0.8;
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i += 1) {
      const v = y1 - (i / 4) * (y1 - y0);
      ctx.fillText(Number(v.toPrecision(3)).toString(), L - 4, T + (i / 4) * (h - T - B) + 4);
    }
    ctx.textAlign = "left";
    ctx.fillText(String(Math.round(x0)), L, h - 6);
    ctx.textAlign = "right";
    ctx.fillText(`${xLabel} ${Math.round(x1)}`, w - R, h - 6);
    ctx.globalAlpha = 1;
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width;
      ctx.beginPath();
      let open = false;
      s.xs.forEach((x, i) => {
        const y = s.ys[i];
        if (!isNum(x) || !isNum(y)) { open = false; return; }
        if (open) ctx.lineTo(sx(x), sy(y)); else ctx.moveTo(sx(x), sy(y));
        open = true;
      });
      ctx.stroke();
      if (s.dots) {
        s.xs.forEach((x, i) => {
          const y = s.ys[i];
          if (!isNum(x) || !isNum(y)) return;
          ctx.beginPath(); ctx.arc(sx(x), sy(y), 3, 0, 2 * Math.PI); ctx.fill();
        });
      }
    }
  }

  // ---- control ---------------------------------------------------------------------------
  function message(text, bad = false) {
    const el = $("control-msg");
    el.textContent = text;
    el.classList.toggle("error", bad);
  }

  async function control(action, extra = {}) {
    const label = action === "set" ? `set ${extra.key}=${extra.value}` : action;
    message(`${label}: sending…`);
    try {
      const resp = await api("api/control", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action, source: "page", wait: 5, ...extra }),
      });
      const doc = await resp.json();
      if (resp.status === 200) message(`${label}: done after step ${doc.step}`);
      else if (resp.status === 202) message(`${label}: queued, it applies after the current step`);
      else message(`${label}: ${(doc.error || {}).message || resp.status}`, true);
    } catch (e) {
      if (!(e instanceof Unauthorized)) message(`${label}: ${e.message}`, true);
    }
  }

  function disarm() {
    clearTimeout(st.disarm);
    delete $("btn-stop").dataset.armed;
    $("btn-stop").textContent = "Stop";
  }

  function wireControls() {
    $("btn-pause").addEventListener("click", () => control("pause"));
    $("btn-resume").addEventListener("click", () => control("resume"));
    $("btn-save").addEventListener("click", () => control("save"));
    $("btn-stop").addEventListener("click", () => {
      const btn = $("btn-stop");
      if (!btn.dataset.armed) {  // a second tap confirms: no dialog a phone could hide
        btn.dataset.armed = "1";
        btn.textContent = "Tap again to stop";
        st.disarm = setTimeout(disarm, 4000);
        return;
      }
      disarm();
      control("stop");
    });
    $("lr-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      control("set", { key: "lr", value: Number($("lr-input").value) });
    });
    $("eval-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      control("set", { key: "eval_every", value: Number($("eval-input").value) });
    });
  }

  // ---- token -----------------------------------------------------------------------------
  function showToken() {
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  function wireToken() {
    $("token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const resp = await fetch("api/login", {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token-input").value }),
      });
      if (resp.ok) {
        $("token-form").hidden = true;
        $("token-error").hidden = true;
        load();
      } else {
        $("token-error").textContent = `${resp.status}: wrong token`;
        $("token-error").hidden = false;
      }
    });
  }

  wireControls();
  wireToken();
  window.addEventListener("resize", queueDraw);
  renderStats();
  load();
})();
