// danlu serve page: upload an image, draw the boxes, filter by score on the client.
// Plain JS, no dependencies. The request asks for every box >= REQUEST_THRESHOLD once, so
// moving the slider only redraws and refilters; it never sends another request.
"use strict";

(() => {
  const REQUEST_THRESHOLD = 0.05;
  const TOKEN_KEY = "danlu.serve.token";
  // Distinct, readable on photos; classes past the palette get golden-angle hues.
  const PALETTE = [
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
    "#bfef45", "#fabed4", "#469990", "#dcbeff", "#9a6324", "#fffac8", "#800000",
    "#aaffc3", "#808000", "#ffd8b1", "#000075", "#a9a9a9", "#ffe119",
  ];

  const $ = (id) => document.getElementById(id);
  const el = {
    fileInput: $("file-input"),
    dropZone: $("drop-zone"),
    threshold: $("threshold"),
    thresholdValue: $("threshold-value"),
    shownCount: $("shown-count"),
    canvas: $("canvas"),
    detections: $("detections"),
    emptyNote: $("empty-note"),
    imageSize: $("image-size"),
    timings: $("timings"),
    modelName: $("model-name"),
    classes: $("classes"),
    error: $("error"),
    tokenForm: $("token-form"),
    tokenInput: $("token-input"),
    status: $("status"),
  };

  const state = {
    model: null,        // the /v1/model answer
    result: null,       // the last /v1/detect 200 answer
    bitmap: null,       // the decoded image for display (null when the browser cannot decode it)
    pendingFile: null,  // a file to send again once a token is entered
    requestId: 0,       // ignore answers to superseded uploads
  };

  // ---- helpers -------------------------------------------------------------------------

  function classColor(label) {
    const i = Number(label) || 0;
    if (i >= 0 && i < PALETTE.length) return PALETTE[i];
    return `hsl(${Math.round((i * 137.508) % 360)} 75% 55%)`;
  }

  function textColorOn(hex) {
    // Black text on light colours, white on dark ones (sRGB luma).
    const m = /^#([0-9a-f]{6})$/i.exec(hex);
    if (!m) return "#000";
    const n = parseInt(m[1], 16);
    const luma = 0.299 * (n >> 16) + 0.587 * ((n >> 8) & 255) + 0.114 * (n & 255);
    return luma > 150 ? "#000" : "#fff";
  }

  function setStatus(text, st) {
    el.status.textContent = text;
    el.status.dataset.state = st;
  }

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
  }

  function getToken() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
  }

  function setToken(token) {
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch { /* storage disabled: the token lives for this request only */ }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const token = getToken();
    if (token) headers.set("Authorization", `Bearer ${token}`);
    return fetch(path, { ...options, headers });
  }

  // "415 unsupported_format: ..." from the contract's error JSON; plain text otherwise.
  async function errorText(resp) {
    let body = "";
    try { body = await resp.text(); } catch { /* keep empty */ }
    try {
      const err = JSON.parse(body).error;
      if (err && (err.code || err.message)) {
        const status = err.status || resp.status;
        return `${status} ${err.code || "error"}: ${err.message || ""}`.trim();
      }
    } catch { /* not JSON */ }
    const tail = body && body.length < 300 ? `: ${body}` : "";
    return `${resp.status} ${resp.statusText || "error"}${tail}`;
  }

  function askForToken(message) {
    el.tokenForm.hidden = false;
    el.tokenInput.value = "";
    el.tokenInput.focus();
    if (message) showError(message);
  }

  // ---- model ---------------------------------------------------------------------------

  async function loadModel() {
    let resp;
    try {
      resp = await api("v1/model");
    } catch (e) {
      el.modelName.textContent = "unreachable";
      showError(`Cannot reach the server: ${e.message}`);
      setStatus("offline", "error");
      return false;
    }
    if (resp.status === 401) {
      el.modelName.textContent = "locked";
      const hadToken = Boolean(getToken());
      setToken("");
      askForToken(hadToken ? "401 unauthorized: that token was not accepted" : "");
      setStatus("Enter the access token", "locked");
      return false;
    }
    if (!resp.ok) {
      showError(await errorText(resp));
      setStatus("model unavailable", "error");
      return false;
    }
    const model = await resp.json();
    state.model = model;
    el.tokenForm.hidden = true;
    el.modelName.textContent = model.name || "model";
    el.modelName.title = [model.backend, model.device, model.version].filter(Boolean).join(" · ");
    renderClasses(model.class_names || []);
    const st = Number(model.score_threshold);
    if (!state.result && Number.isFinite(st)) {
      el.threshold.value = String(Math.min(1, Math.max(REQUEST_THRESHOLD, st)));
      updateThresholdLabel();
    }
    if (!state.result) setStatus("Choose an image", "idle");
    return true;
  }

  function renderClasses(names) {
    el.classes.replaceChildren(...names.map((name, i) => {
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = classColor(i);
      li.append(sw, document.createTextNode(name));
      return li;
    }));
  }

  function className(det) {
    if (det.class_name) return det.class_name;
    const names = (state.model && state.model.class_names) || [];
    return names[det.label] !== undefined ? names[det.label] : String(det.label);
  }

  // ---- upload --------------------------------------------------------------------------

  async function decodeForDisplay(file) {
    try {
      return await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch {
      return null;  // e.g. TIFF: still send it, draw the boxes on a blank canvas
    }
  }

  async function handleFile(file) {
    if (!file) return;
    const id = ++state.requestId;
    state.pendingFile = file;
    showError("");
    clearResult();  // never show the previous image's boxes next to this upload's outcome
    setStatus("Detecting…", "busy");
    const body = new FormData();
    body.append("image", file, file.name || "pasted-image");
    const [bitmap, resp] = await Promise.all([
      decodeForDisplay(file),
      api(`v1/detect?score_threshold=${REQUEST_THRESHOLD}`, { method: "POST", body })
        .catch((e) => e),
    ]);
    if (id !== state.requestId) {  // a newer upload started meanwhile
      if (bitmap) bitmap.close();
      return;
    }
    const result = await readResult(resp);
    if (!result) {
      if (bitmap) bitmap.close();
      return;
    }
    state.pendingFile = null;
    state.bitmap = bitmap;
    state.result = result;
    render();
    renderTimings(result);
    el.imageSize.textContent = `${result.width}×${result.height}`;
    setStatus("ready", "done");
  }

  // The /v1/detect body, or null after showing why there is none.
  async function readResult(resp) {
    if (resp instanceof Error) {
      showError(`Cannot reach the server: ${resp.message}`);
      setStatus("error", "error");
      return null;
    }
    if (resp.status === 401) {
      setToken("");
      askForToken("401 unauthorized: enter the access token, then the image is sent again");
      setStatus("Enter the access token", "locked");
      return null;
    }
    if (!resp.ok) {
      showError(await errorText(resp));
      setStatus("error", "error");
      return null;
    }
    try {
      const result = await resp.json();
      if (Array.isArray(result.detections)) return result;
    } catch { /* fall through */ }
    showError(`${resp.status}: the server's answer is not a detection result`);
    setStatus("error", "error");
    return null;
  }

  function clearResult() {
    state.result = null;
    if (state.bitmap) state.bitmap.close();
    state.bitmap = null;
    el.canvas.hidden = true;
    el.imageSize.textContent = "";
    renderTable([]);
    renderTimings({});
    el.shownCount.textContent = "0 / 0";
  }

  // ---- drawing -------------------------------------------------------------------------

  function visibleDetections() {
    if (!state.result) return [];
    const t = Number(el.threshold.value);
    return state.result.detections
      .filter((d) => d.score >= t)
      .sort((a, b) => b.score - a.score);
  }

  function render() {
    const dets = visibleDetections();
    drawCanvas(dets);
    renderTable(dets);
    const total = state.result ? state.result.detections.length : 0;
    el.shownCount.textContent = `${dets.length} / ${total}`;
  }

  function drawCanvas(dets) {
    const r = state.result;
    if (!r) return;
    const canvas = el.canvas;
    canvas.hidden = false;
    // Fit the wrapper's width and at most 75% of the viewport height, at device resolution.
    const wrapWidth = canvas.parentElement.clientWidth || r.width;
    const maxHeight = Math.max(200, window.innerHeight * 0.75);
    const cssWidth = Math.max(1, Math.min(wrapWidth, (maxHeight * r.width) / r.height));
    const cssHeight = (cssWidth * r.height) / r.width;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = `${cssWidth}px`;
    canvas.style.height = `${cssHeight}px`;
    canvas.width = Math.round(cssWidth * dpr);
    canvas.height = Math.round(cssHeight * dpr);

    const ctx = canvas.getContext("2d");
    const sx = canvas.width / r.width;   // image pixels -> canvas pixels
    const sy = canvas.height / r.height;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (state.bitmap) {
      ctx.imageSmoothingQuality = "high";
      ctx.drawImage(state.bitmap, 0, 0, canvas.width, canvas.height);
    } else {
      ctx.fillStyle = "#333";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    }

    const line = Math.max(2, 2 * dpr);
    // Smaller labels on small canvases (phones), so dense results stay readable.
    const fontPx = Math.round(Math.min(13, Math.max(10, cssWidth / 45)) * dpr);
    ctx.font = `600 ${fontPx}px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif`;
    ctx.textBaseline = "top";
    // Draw low scores first so the strongest boxes and labels end on top.
    for (const d of [...dets].reverse()) {
      const color = classColor(d.label);
      ctx.beginPath();
      if (Array.isArray(d.polygon) && d.polygon.length >= 3) {
        d.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x * sx, y * sy) : ctx.moveTo(x * sx, y * sy)));
        ctx.closePath();
      } else {
        const [x1, y1, x2, y2] = d.box;
        ctx.rect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      }
      // A dark halo under the coloured line keeps boxes visible on any background.
      ctx.strokeStyle = "rgba(0, 0, 0, 0.55)";
      ctx.lineWidth = line + 2 * dpr;
      ctx.stroke();
      ctx.strokeStyle = color;
      ctx.lineWidth = line;
      ctx.stroke();
      drawLabel(ctx, d, color, fontPx, line, sx, sy);
    }
  }

  function drawLabel(ctx, d, color, fontPx, line, sx, sy) {
    const text = `${className(d)} ${d.score.toFixed(2)}`;
    const padX = Math.round(fontPx * 0.35);
    const h = Math.round(fontPx * 1.35);
    const w = ctx.measureText(text).width + 2 * padX;
    const bx = d.box[0] * sx - line / 2;
    let by = d.box[1] * sy - h;          // above the box when it fits
    if (by < 0) by = d.box[1] * sy;      // otherwise just inside its top edge
    const x = Math.min(Math.max(0, bx), Math.max(0, ctx.canvas.width - w));
    ctx.fillStyle = color;
    ctx.fillRect(x, by, w, h);
    ctx.fillStyle = textColorOn(color);
    ctx.fillText(text, x + padX, by + (h - fontPx) / 2);
  }

  function renderTable(dets) {
    const rows = dets.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.score = String(d.score);
      tr.dataset.label = String(d.label);
      const cls = document.createElement("td");
      cls.className = "cls";
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = classColor(d.label);
      cls.append(sw, document.createTextNode(className(d)));
      tr.append(cls, numCell(d.score.toFixed(2)), ...d.box.map((v) => numCell(v.toFixed(1))));
      return tr;
    });
    el.detections.replaceChildren(...rows);
    const total = state.result ? state.result.detections.length : 0;
    el.emptyNote.hidden = rows.length > 0;
    el.emptyNote.textContent = !state.result
      ? "No image yet."
      : total === 0
        ? "The model found nothing in this image."
        : "No detection at or above this threshold.";
  }

  function numCell(text) {
    const td = document.createElement("td");
    td.className = "num";
    td.textContent = text;
    return td;
  }

  function renderTimings(r) {
    const t = r.timings_ms || {};
    for (const dd of el.timings.querySelectorAll("dd[data-key]")) {
      const key = dd.dataset.key;
      const v = key === "batch_size" ? r.batch_size : t[key];
      dd.textContent = v === undefined || v === null
        ? "–"
        : key === "batch_size" ? String(v) : Number(v).toFixed(1);
    }
  }

  function updateThresholdLabel() {
    el.thresholdValue.textContent = Number(el.threshold.value).toFixed(2);
  }

  // ---- events --------------------------------------------------------------------------

  el.threshold.addEventListener("input", () => {
    updateThresholdLabel();
    render();
  });

  el.fileInput.addEventListener("change", () => {
    const file = el.fileInput.files && el.fileInput.files[0];
    handleFile(file);
    el.fileInput.value = "";  // choosing the same file again still fires "change"
  });

  // The whole page accepts drops, so a missed drop never navigates away to the image.
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (e) => {
      e.preventDefault();
      el.dropZone.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (e) => {
    if (e.relatedTarget === null) el.dropZone.classList.remove("over");
  });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    el.dropZone.classList.remove("over");
    const files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) handleFile(files[0]);
  });

  document.addEventListener("paste", (e) => {
    const items = (e.clipboardData && e.clipboardData.items) || [];
    for (const item of items) {
      if (item.kind === "file" && item.type.startsWith("image/")) {
        e.preventDefault();
        handleFile(item.getAsFile());
        return;
      }
    }
  });

  // Keyboard: Enter or Space on the drop zone opens the file chooser.
  el.dropZone.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && e.target === el.dropZone) {
      e.preventDefault();
      el.fileInput.click();
    }
  });

  el.tokenForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = el.tokenInput.value.trim();
    if (!token) return;
    setToken(token);
    showError("");
    if (await loadModel() && state.pendingFile) handleFile(state.pendingFile);
  });

  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.result) render(); }, 100);
  });

  updateThresholdLabel();
  loadModel();
})();
