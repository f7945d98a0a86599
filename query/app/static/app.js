// Lookalike web page: plain JS, no build step. Talks to /api/stats, /api/fields, /api/query,
// /api/sheet, /api/thumb, /api/photo and /api/people (the People view, #people).
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const COLOURS = ["#e6194b", "#800000", "#0082c8", "#f58230", "#911eb4", "#46c8c8", "#f032e6",
                   "#808000", "#000080", "#aa6e28"];
  const state = { file: null, tri: new Map(), maxBytes: 15 * 1024 * 1024, lastResult: null, lastForm: null };
  const NARROW = window.matchMedia("(max-width: 900px)");

  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  };
  const pretty = (name) => name.replace(/^Five_o_Clock_Shadow$/, "5 o'clock shadow").replace(/_/g, " ");
  const basename = (p) => String(p || "").split(/[\\/]/).pop();

  // ---- options from the server ---------------------------------------------------------------
  async function loadOptions() {
    try {
      const [stats, fields] = await Promise.all([
        fetch("/api/stats").then(jsonOrThrow), fetch("/api/fields").then(jsonOrThrow)]);
      state.maxBytes = stats.max_upload_bytes;
      $("maxmb").textContent = Math.round(stats.max_upload_bytes / 1048576);
      const sel = $("model");
      sel.innerHTML = "";
      for (const c of stats.collections.filter((c) => c.model)) {
        const o = el("option", { value: c.model, text: `${c.model} · ${c.rows.toLocaleString()} faces` });
        if (c.model === stats.default_model) o.selected = true;
        sel.append(o);
      }
      $("k").max = stats.top_k.max;  // the API's bound: the page offers what the API takes
      $("k").title = `1 to ${stats.top_k.max}`;
      const faces = stats.collections.filter((c) => c.model).reduce((a, c) => Math.max(a, c.rows), 0);
      $("dbinfo").textContent = `${stats.database} · ${stats.models.length} model${stats.models.length === 1 ? "" : "s"}` +
        ` · ${faces.toLocaleString()} faces · detector ${stats.detector}`;
      if (!stats.models.length) {
        banner("info", "The database is empty", "Ingest photos first: <code>lookalike ingest SOURCE</code>");
      }
      buildFilters(fields.attribute_groups);
      // attributes are CelebA's annotation: a gallery without any gets no attribute filters
      document.querySelectorAll("#groups, #annotated-row, .filters .hint").forEach((e) => { e.hidden = !stats.annotated_faces; });
    } catch (e) {
      $("dbinfo").textContent = "not connected";
      banner("error", "Cannot reach the server", escapeHtml(e.message));
    }
  }

  async function jsonOrThrow(r) {
    let body = null;
    try { body = await r.json(); } catch (_) { /* not JSON */ }
    if (!r.ok) {
      const err = new Error((body && body.error && body.error.message) || `HTTP ${r.status}`);
      err.status = r.status;
      err.info = body && body.error;
      throw err;
    }
    return body;
  }

  // ---- tri-state filters ---------------------------------------------------------------------
  function triControl(field, label) {
    const node = $("tri-tpl").content.firstElementChild.cloneNode(true);
    node.dataset.field = field;
    node.querySelector(".tri-name").textContent = label;
    node.querySelector(".tri-name").title = field;
    node.setAttribute("aria-label", label);
    node.querySelectorAll("button").forEach((b) => {
      b.setAttribute("aria-checked", b.dataset.v === "any" ? "true" : "false");
      b.addEventListener("click", () => setTri(field, b.dataset.v));
    });
    state.tri.set(field, { node, value: "any" });
    return node;
  }

  function setTri(field, v) {
    const t = state.tri.get(field);
    if (!t) return;
    t.value = v;
    unmark(t.node);
    t.node.querySelectorAll("button").forEach((b) => {
      b.classList.toggle("on", b.dataset.v === v);
      b.setAttribute("aria-checked", b.dataset.v === v ? "true" : "false");
    });
    updateCounts();
  }

  function buildFilters(groups) {
    const root = $("groups");
    root.innerHTML = "";
    state.tri.clear();
    $("annotated-row").append(triControl("has_attributes", "Only annotated (CelebA) faces"));
    for (const g of groups) {
      const items = el("div", { class: "items" });
      for (const f of g.fields) items.append(triControl(f, pretty(f)));
      const d = el("details", { class: "group" },
        el("summary", {}, el("span", { text: g.name }), el("span", { class: "pill", hidden: "" })), items);
      d.dataset.group = g.name;
      root.append(d);
    }
    updateCounts();
  }

  function updateCounts() {
    let total = 0;
    document.querySelectorAll("details.group").forEach((d) => {
      let n = 0;
      d.querySelectorAll(".tri").forEach((t) => { if (state.tri.get(t.dataset.field).value !== "any") n++; });
      const p = d.querySelector("summary .pill");
      p.hidden = !n; p.textContent = n;
      total += n;
    });
    if (state.tri.get("has_attributes") && state.tri.get("has_attributes").value !== "any") total++;
    $("nactive").hidden = !total;
    $("nactive").textContent = `${total} active`;
  }

  $("clear").addEventListener("click", () => {
    for (const f of state.tri.keys()) setTri(f, "any");
    $("filter").value = "";
    unmark($("filter"));
  });
  $("filter").addEventListener("input", () => unmark($("filter")));
  $("k").addEventListener("input", () => unmark($("k")));
  $("model").addEventListener("change", () => unmark($("model")));
  // a phone shows the filters closed: open, they stand ~1,000 px before the results
  if (NARROW.matches) $("filters").open = false;

  // ---- choosing a photo ----------------------------------------------------------------------
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) choose(f);
  });
  // dropping anywhere else must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("file").addEventListener("change", () => { if ($("file").files[0]) choose($("file").files[0]); });

  function choose(file) {
    state.file = file;
    drop.querySelector(".drop-empty").hidden = true;
    drop.querySelector(".drop-chosen").hidden = false;
    const img = $("chosenimg");
    if (img.src) URL.revokeObjectURL(img.src);
    img.hidden = false;
    img.src = URL.createObjectURL(file);
    // what the browser cannot draw (a text file named .jpg, HEIC...) shows no broken-image icon
    img.onerror = () => { img.removeAttribute("src"); img.hidden = true; };
    $("chosenname").textContent = `${file.name || "photo"} · ${(file.size / 1048576).toFixed(1)} MB`;
    $("go").disabled = false;
    if (file.size > state.maxBytes) {
      clearResult();  // the results on screen are another photo's
      showError({ message: `The limit is ${Math.round(state.maxBytes / 1048576)} MB.`, info: { code: "too_large" } });
      return;
    }
    search();
  }

  // ---- camera --------------------------------------------------------------------------------
  let stream = null;
  $("camera").addEventListener("click", async () => {
    const dlg = $("camdlg");
    $("camerr").hidden = true;
    $("snap").disabled = true;
    dlg.showModal();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      camError("The camera needs a secure page: open the app on localhost or over HTTPS.");
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 }, height: { ideal: 720 } }, audio: false });
      $("video").srcObject = stream;
      $("snap").disabled = false;
    } catch (e) {
      camError(e.name === "NotAllowedError" ? "Camera access was refused." :
               e.name === "NotFoundError" ? "No camera found." : `Camera unavailable: ${e.message}`);
    }
  });
  function camError(msg) { $("camerr").textContent = msg; $("camerr").hidden = false; }
  function stopCamera() {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    $("video").srcObject = null;
  }
  $("camcancel").addEventListener("click", () => $("camdlg").close());
  $("camdlg").addEventListener("close", stopCamera);
  $("snap").addEventListener("click", () => {
    const v = $("video");
    if (!v.videoWidth) return;
    const c = el("canvas");
    c.width = v.videoWidth; c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    c.toBlob((blob) => {
      $("camdlg").close();
      if (blob) choose(new File([blob], "camera.jpg", { type: "image/jpeg" }));
    }, "image/jpeg", 0.92);
  });

  // ---- search --------------------------------------------------------------------------------
  $("form").addEventListener("submit", (e) => { e.preventDefault(); search(); });

  let inflight = null;
  async function search() {
    if (!state.file) return;
    if (inflight) inflight.abort();
    const ctrl = new AbortController();
    inflight = ctrl;
    clearBanner();
    clearMarks();
    const fd = new FormData();
    fd.append("image", state.file, state.file.name || "photo.jpg");
    if ($("model").value) fd.append("model", $("model").value);
    fd.append("k", $("k").value || "5");
    const expr = $("filter").value.trim();
    if (expr) fd.append("filter", expr);
    for (const [f, t] of state.tri) {
      if (t.value === "yes") fd.append("where", f);
      else if (t.value === "no") fd.append("where_not", f);
    }
    if ($("exclude").checked) fd.append("exclude_same_image", "true");
    $("busy").hidden = false;
    $("go").disabled = true;
    try {
      const r = await fetch("/api/query", { method: "POST", body: fd, signal: ctrl.signal });
      const doc = await jsonOrThrow(r);
      state.lastForm = fd;  // to search again if the server no longer keeps this result for its sheet
      show(doc);
    } catch (e) {
      if (e.name === "AbortError") return;
      // results left on screen would read as this search's (another photo's, another filter's)
      clearResult();
      showError(e);
    } finally {
      if (inflight === ctrl) { inflight = null; $("busy").hidden = true; $("go").disabled = !state.file; }
    }
  }

  function showError(e) {
    const info = e.info || {};
    const titles = {
      invalid_filter: "Invalid filter", unreadable: "This file cannot be read", too_large: "This file is too large",
      unsupported_type: "Not a supported image", bad_option: "Invalid option", unknown_model: "Unknown model",
      invalid_request: "Invalid option", bad_request: "Cannot run this search",
      weights_missing: "Model weights are missing", store_error: "Database error", not_ready: "The server is starting",
    };
    const title = titles[info.code] || "Something went wrong";
    banner("error", title, escapeHtml(e.message));
    // The field at fault gets the message beside it and is brought into view: the banner heads the
    // results column, which may be scrolled away (a long result) or below the form (a phone).
    let field = null;
    if (["too_large", "unreadable", "unsupported_type"].includes(info.code)) field = drop;
    else if (info.code === "unknown_model") field = $("model");
    else if (info.code === "invalid_request" && info.field) {
      field = document.querySelector(`#form :is(input, select, textarea)[name="${CSS.escape(info.field)}"]`);
    } else if (info.code === "invalid_filter") {
      $("filters").open = true;
      const t = info.field && state.tri.get(info.field);
      if (t) {
        const d = t.node.closest("details"); if (d) d.open = true;
        field = t.node;
      } else field = $("filter");
    }
    if (!field) { $("banner").scrollIntoView({ block: "nearest" }); return; }
    mark(field, title, e.message);
    if (field !== drop) field.focus({ preventScroll: true });
  }

  // the message goes right after the field (after the whole drop zone, after a tri-state row)
  function mark(field, title, text) {
    unmark(field);
    field.classList.add("invalid");
    const msg = el("span", { class: "field-msg", id: `${field.id || `tri-${field.dataset.field}`}-msg` },
                   el("b", { text: `${title}: ` }), text);
    field.after(msg);
    field.setAttribute("aria-describedby", msg.id);
    field.setAttribute("aria-invalid", "true");
    // "nearest" shows the field with its message below it, under the sticky top bar (scroll-padding)
    msg.scrollIntoView({ block: "nearest" });
    field.scrollIntoView({ block: "nearest" });
  }
  function unmark(field) {
    field.classList.remove("invalid");
    field.removeAttribute("aria-invalid");
    const id = field.getAttribute("aria-describedby");
    field.removeAttribute("aria-describedby");
    if (id && $(id)) $(id).remove();
  }
  function clearMarks() { document.querySelectorAll("#form .invalid").forEach(unmark); }

  function banner(kind, title, html) {
    const b = $("banner");
    b.className = `banner ${kind}`;
    b.innerHTML = `<div><b>${escapeHtml(title)}</b>${html}</div>`;
    b.hidden = false;
  }
  function clearBanner() { $("banner").hidden = true; }
  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  // ---- result --------------------------------------------------------------------------------
  function clearResult() {
    state.lastResult = null;
    state.lastForm = null;
    document.body.classList.remove("has-result");  // a phone shows the form first again
    $("result").hidden = true;
    $("empty").hidden = false;
    $("summary").innerHTML = "";
    $("faces").innerHTML = "";
    $("stage").querySelectorAll(".box").forEach((b) => b.remove());
    $("photo").onload = null;
    $("photo").removeAttribute("src");
  }

  function show(doc) {
    const p = doc.photo;
    state.lastResult = doc;
    document.body.classList.add("has-result");  // a phone shows the results above the form
    $("empty").hidden = true;
    $("result").hidden = false;
    const model = p.models[0];
    const n = p.faces.length;
    const summary = $("summary");
    summary.innerHTML = "";
    summary.append(
      el("span", { class: "title", text: p.path }),
      el("span", { class: "tag", text: `${n} face${n === 1 ? "" : "s"}` }),
      el("span", { class: "tag", text: `${p.models.join(", ")} · top ${p.top_k}` }),
      el("span", { class: "tag", text: `${p.width}×${p.height}` }),
      el("span", { class: "tag", text: `${doc.seconds.toFixed(2)} s` }));
    if (p.filter) summary.append(el("span", { class: "tag filter", title: p.filter, text: p.filter }));

    const stage = $("stage");
    stage.querySelectorAll(".box").forEach((b) => b.remove());
    stage.classList.remove("has-sel");
    const img = $("photo");
    const faces = $("faces");
    faces.innerHTML = "";
    img.onload = () => drawCrops(p);
    img.src = doc.preview || "";
    if (NARROW.matches) window.scrollTo(0, 0);  // the results now come first

    if (!n) {
      banner("info", "No face found",
        `The detector (${escapeHtml(p.detector)}) found no face in this photo. Try a photo where faces are larger, frontal and well lit.`);
      return;
    }
    for (const f of p.faces) {
      const c = COLOURS[f.index % COLOURS.length];
      const [x, y, w, h] = f.box;
      const box = el("div", { class: "box", style: `--c:${c};left:${(100 * x / p.width).toFixed(3)}%;top:${(100 * y / p.height).toFixed(3)}%;` +
        `width:${(100 * w / p.width).toFixed(3)}%;height:${(100 * h / p.height).toFixed(3)}%`, title: `face ${f.index + 1}` },
        el("span", { text: String(f.index + 1) }));
      if (y < 0.06 * p.height) box.classList.add("top");
      box.dataset.face = f.index;
      box.addEventListener("click", () => select(f.index, true));
      stage.append(box);

      const q = el("div", { class: "qface" }, el("canvas", { width: "208", height: "208" }),
        el("b", {}, el("i", { text: String(f.index + 1) }), `Face ${f.index + 1}`),
        el("span", { text: `confidence ${f.confidence.toFixed(2)}` + (f.quality == null ? "" : ` · quality ${f.quality.toFixed(2)}`) }),
        f.low_quality && f.verdict !== "too_poor" ? el("span", { class: "lowq", text: "Low quality (tiny, blurred or turned away): its matches mean little" }) : null,
        el("span", { class: "verdict" + (f.verdict === "too_poor" ? " poor" : ""), text: verdictLine(f),
                     title: f.verdict === "too_poor" ? "Tiny, blurred or turned away: no match is called the same person" : "" }),
        personLine(f.person));
      const ms = el("div", { class: "matches" });
      if (!f.matches.length) {
        ms.append(el("div", { class: "nomatch", text: p.filter ? "No stored face passes this filter." : "No match." }));
      }
      for (const m of f.matches) ms.append(matchCard(model, m));
      // a row wider than the screen scrolls sideways: say so (fade + "scroll →") until its end
      const mw = el("div", { class: "mwrap" }, ms, el("span", { class: "scroll-hint", "aria-hidden": "true", text: "scroll →" }));
      ms.addEventListener("scroll", () => scrollHint(mw), { passive: true });
      const row = el("div", { class: "face", style: `--c:${c}` }, q, mw);
      row.dataset.face = f.index;
      row.addEventListener("click", () => select(f.index, false));
      faces.append(row);
    }
    document.querySelectorAll(".mwrap").forEach(scrollHint);
  }

  function scrollHint(mw) {
    const ms = mw.firstElementChild;
    const more = ms.scrollWidth - ms.clientWidth - ms.scrollLeft > 2;
    mw.classList.toggle("overflows", more);
  }
  window.addEventListener("resize", () => document.querySelectorAll(".mwrap").forEach(scrollHint));

  function verdictLine(f) {
    const ms = f.matches;
    // a face too poor to judge (tiny, blurred or turned away) gets no verdict: its matches are lookalikes only
    if (f.verdict === "too_poor") {
      return "Face too poor to judge" + (f.quality == null ? "" : ` (quality ${f.quality.toFixed(2)})`) +
             ": lookalikes only, no verdict";
    }
    if (!ms.length || ms[0].same_person == null) return "Similarity only: no same-person verdict for this model";
    const same = [...new Set(ms.filter((m) => m.same_person).map((m) => (m.identity || "an unlabelled face").replace(/_/g, " ")))];
    return same.length ? `Likely the same person: ${same.join(", ")}` : "Nobody here is likely the same person; nearest lookalikes:";
  }

  // who the face is, by the persons `lookalike people` grouped (null: too poor, or people never ran)
  const personLabel = (p) => (p.name ? p.name.replace(/_/g, " ") : `person ${p.id}`);
  function personLine(a) {
    if (!a) return null;
    if (a.answer === "unknown") {
      return el("span", { class: "person unknown", text: "Unknown: not in the gallery",
                          title: "nobody in the collection is likely this person" });
    }
    const text = a.answer === "named" ? a.name.replace(/_/g, " ") : `person ${a.id}`;
    return el("span", { class: "person", text: `→ ${text}`,
                        title: a.id == null ? "not grouped into a person yet (lookalike people)" :
                               `person ${a.id}` + (a.answer === "unnamed" ? " · no name yet (People view)" : "") });
  }

  // a file name wraps after its "_", "-" and "." (<wbr>) rather than mid-word: "Tom_Hanks_|0002.jpg"
  const breakable = (name) => name.split(/(?<=[_.-])/).flatMap((part, i) => (i ? [el("wbr"), part] : [part]));

  function matchCard(model, m) {
    const thumb = el("img", { class: "thumb", alt: m.identity || "match", loading: "lazy",
                              src: `/api/thumb/${encodeURIComponent(model)}/${encodeURIComponent(m.id)}` });
    thumb.onerror = () => { thumb.classList.add("missing"); thumb.removeAttribute("src"); };
    const pct = Math.max(0, Math.min(100, Math.round(m.score * 100)));
    const verdict = m.same_person == null ? null : el("div", { class: m.same_person ? "same" : "other",
      text: (m.same_person ? "same person" : "other person") +
            (m.same_person_probability == null ? "" : ` · ${Math.round(100 * m.same_person_probability)}%`) });
    const card = el("div", { class: "match" + (m.same_person ? " is-same" : ""), role: "button", tabindex: "0",
                             title: `${m.identity || "unknown"} · score ${m.score.toFixed(3)}\n${m.source_path}\nclick: the whole photo` },
      thumb, verdict,
      el("div", { class: "score" }, el("span", { text: m.score.toFixed(2) }),
         el("span", { class: "bar" }, el("i", { style: `width:${pct}%` }))),
      el("div", { class: "ident", text: m.identity ? m.identity.replace(/_/g, " ") : "unknown" }),
      el("div", { class: "src" }, ...breakable(basename(m.source_path))));
    card.addEventListener("click", () => openPhoto(model, m));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openPhoto(model, m); } });
    return card;
  }

  // ---- a match's source photo (lightbox) -----------------------------------------------------
  function openPhoto(model, m) {
    const url = `/api/photo/${encodeURIComponent(model)}/${encodeURIComponent(m.id)}`;
    const img = $("bigphoto");
    const cap = `${m.identity ? m.identity.replace(/_/g, " ") : "unknown"} · score ${m.score.toFixed(2)} · ${basename(m.source_path)}`;
    $("bigcap").textContent = cap;
    img.alt = cap;
    img.onerror = () => { $("bigcap").textContent = `${cap} · the photo is missing or unreadable`; };
    img.src = url;
    $("bigopen").href = url;
    $("photodlg").showModal();
  }
  $("bigclose").addEventListener("click", () => $("photodlg").close());
  // a click on the backdrop (outside the dialog's box) closes it
  $("photodlg").addEventListener("click", (e) => { if (e.target === $("photodlg")) $("photodlg").close(); });
  $("photodlg").addEventListener("close", () => $("bigphoto").removeAttribute("src"));

  // ---- downloads -----------------------------------------------------------------------------
  function download(blob, name) {
    const a = el("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  const stem = () => basename(state.lastResult.photo.path).replace(/\.[^.]*$/, "") || "photo";

  $("dl-json").addEventListener("click", () => {
    const d = state.lastResult;
    if (!d) return;
    // the shape `lookalike query --json` writes (query.results.Document)
    const doc = { version: d.version, photos: [d.photo] };
    download(new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" }), `${stem()}-lookalike.json`);
  });
  $("dl-sheet").addEventListener("click", async () => {
    if (!state.lastForm) return;
    const b = $("dl-sheet");
    const label = b.textContent;
    b.disabled = true;
    b.textContent = "Drawing…";
    try {
      const sheet = () => {
        const fd = new FormData();
        fd.append("result_id", state.lastResult.result_id);
        return fetch("/api/sheet", { method: "POST", body: fd });
      };
      let r = await sheet();
      if (r.status === 404) {  // the server keeps its last results only: search again, then draw that
        state.lastResult.result_id = (await jsonOrThrow(await fetch("/api/query", { method: "POST", body: state.lastForm }))).result_id;
        r = await sheet();
      }
      if (!r.ok) await jsonOrThrow(r);
      download(await r.blob(), `${stem()}-lookalike.png`);
    } catch (e) {
      showError(e);
    } finally {
      b.disabled = false;
      b.textContent = label;
    }
  });
  $("to-form").addEventListener("click", () => $("form").scrollIntoView({ behavior: "smooth", block: "start" }));

  function drawCrops(p) {
    const img = $("photo");
    const s = img.naturalWidth / p.width;
    document.querySelectorAll(".face").forEach((row) => {
      const f = p.faces[Number(row.dataset.face)];
      const cv = row.querySelector("canvas");
      const ctx = cv.getContext("2d");
      let [x, y, w, h] = f.box.map((v) => v * s);
      const side = Math.max(w, h) * 1.3;
      const cx = x + w / 2, cy = y + h / 2;
      ctx.fillStyle = "#eee";
      ctx.fillRect(0, 0, cv.width, cv.height);
      ctx.drawImage(img, cx - side / 2, cy - side / 2, side, side, 0, 0, cv.width, cv.height);
    });
  }

  function select(i, scroll) {
    document.querySelectorAll(".box, .face").forEach((e) => e.classList.toggle("sel", Number(e.dataset.face) === i));
    $("stage").classList.add("has-sel");
    if (scroll) {
      const row = document.querySelector(`.face[data-face="${i}"]`);
      if (row) row.scrollIntoView({ behavior: "smooth", block: "nearest" });
    }
  }

  // ---- People view (#people): the persons `lookalike people` stored --------------------------
  const thumbUrl = (model, id) => `/api/thumb/${encodeURIComponent(model)}/${encodeURIComponent(id)}`;
  const thumbImg = (model, id, alt) => {
    const img = el("img", { src: thumbUrl(model, id), alt, loading: "lazy" });
    img.onerror = () => { img.classList.add("missing"); img.removeAttribute("src"); };
    return img;
  };
  const peopleState = { doc: null, open: null };

  function showView() {
    const people = location.hash === "#people";
    $("peopleview").hidden = !people;
    document.querySelector("main.layout").hidden = people;
    $("tab-people").classList.toggle("on", people);
    $("tab-search").classList.toggle("on", !people);
    $("tab-people").toggleAttribute("aria-current", people);
    $("tab-search").toggleAttribute("aria-current", !people);
    if (people) loadPeople();
  }
  window.addEventListener("hashchange", showView);
  $("tab-search").addEventListener("click", (e) => {
    e.preventDefault();
    history.pushState(null, "", location.pathname);
    showView();
  });

  async function loadPeople() {
    const model = $("model").value;
    const note = $("people-note");
    try {
      const doc = await fetch("/api/people" + (model ? `?model=${encodeURIComponent(model)}` : "")).then(jsonOrThrow);
      peopleState.doc = doc;
      note.hidden = !doc.note;
      note.className = "banner info";
      note.textContent = doc.note || "";
      const faces = doc.people.reduce((a, p) => a + p.faces.length, 0);
      $("people-info").textContent = `${doc.people.length} person${doc.people.length === 1 ? "" : "s"} · ` +
        `${faces.toLocaleString()} faces · ${doc.model}`;
      drawPeople();
      const open = peopleState.open != null && doc.people.find((p) => p.id === peopleState.open);
      if (open) openPerson(open); else closePerson();
    } catch (e) {
      note.hidden = false;
      note.className = "banner error";
      note.textContent = `Cannot list the people: ${e.message}`;
    }
  }

  function drawPeople() {
    const doc = peopleState.doc;
    const grid = $("pgrid");
    grid.innerHTML = "";
    for (const p of doc.people) {
      const rep = p.representative || p.faces[0];
      const card = el("div", { class: "pcard", role: "button", tabindex: "0", "data-person": String(p.id),
                               title: `person ${p.id}` + (p.named_by === "identity" ? " · named by its faces' identity" : "") },
        rep ? thumbImg(doc.model, rep.id, personLabel(p)) : null,
        el("span", { class: "pn" + (p.name ? "" : " unnamed"), text: personLabel(p) }),
        el("span", { class: "pc", text: `${p.faces.length} face${p.faces.length === 1 ? "" : "s"} · ${p.photos} photo${p.photos === 1 ? "" : "s"}` }));
      card.addEventListener("click", () => openPerson(p));
      card.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openPerson(p); } });
      grid.append(card);
    }
  }

  function openPerson(p) {
    const model = peopleState.doc.model;
    peopleState.open = p.id;
    $("pgrid").hidden = true;
    $("pdetail").hidden = false;
    $("pname").textContent = personLabel(p);
    $("pcount").textContent = `person ${p.id} · ${p.faces.length} face${p.faces.length === 1 ? "" : "s"}` +
      (p.merged.length ? ` · merged: ${p.merged.join(", ")}` : "");
    $("pnamein").value = p.named_by === "user" ? p.name : "";
    $("pnamein").placeholder = p.named_by === "identity" ? `Name this person (now: ${personLabel(p)})` : "Name this person";
    const box = $("pfaces");
    box.innerHTML = "";
    for (const f of p.faces) {
      box.append(el("figure", { title: `${f.source} · face ${f.face + 1}` }, thumbImg(model, f.id, `${personLabel(p)}: ${f.source}`),
                    el("figcaption", {}, ...breakable(f.source))));
    }
    window.scrollTo(0, 0);
  }
  function closePerson() {
    peopleState.open = null;
    $("pdetail").hidden = true;
    $("pgrid").hidden = false;
  }
  $("pback").addEventListener("click", closePerson);
  $("pnameform").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (peopleState.open == null) return;
    const model = peopleState.doc.model;
    try {
      await fetch(`/api/people/${peopleState.open}/name?model=${encodeURIComponent(model)}`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ name: $("pnamein").value }) }).then(jsonOrThrow);
      await loadPeople();
    } catch (err) {
      const note = $("people-note");
      note.hidden = false;
      note.className = "banner error";
      note.textContent = `Cannot name this person: ${err.message}`;
    }
  });

  loadOptions().then(showView);
})();
