// The upload screen: a dropped or picked folder is read in the browser (DICOM by content,
// headers with dicom-parser), grouped by patient and study, given a template and per-patient
// overrides, then sent as parallel resumable tus uploads into a held batch; then the batch's
// studies are organised on the board (loaded on demand) and confirmed.
import * as tus from "tus-js-client";
import { api, csrf, el, sha256Base64 } from "./api.js";
import { readHeader } from "./dicom.js";
import { filesOfDrop, filesOfInput } from "./folder.js";
import { VirtualList } from "./virtual_list.js";

// A browser opens at most 6 connections to one host over HTTP/1.1: one is left for the page.
const PARALLEL_UPLOADS = 5; // window.relaypacs.parallel: the benchmark compares with 1
const READ_CONCURRENCY = 24;
const CHECKSUM_MAX_BYTES = 512 * 1024 * 1024;
const BATCH_KEY = "relaypacs.batch"; // the open batch's id only: never a token, never patient data
const $ = (id) => document.getElementById(id);

const state = {
  files: [], byPath: new Map(), reading: 0, readQueue: [], batch: null, running: false,
  paused: false, active: new Set(), templates: [], startedAt: 0, timings: {},
  // A cut connection keeps what arrived, and each PATCH commits its offset: 8 MiB is one
  // request for most DICOM files and little to resend of a large one.
  chunkSize: 8 * 1024 * 1024,
  parallel: PARALLEL_UPLOADS,
};
window.relaypacs = state; // read by the tests and benchmarks (timings, counts)

function human(bytes) {
  const units = ["B", "KB", "MB", "GB"];
  let i = 0;
  while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
  return `${bytes.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// -- reading -------------------------------------------------------------------------------

let list;
function addFile(file, path) {
  const same = state.byPath.get(path);
  if (same && same.size === file.size && same.file.lastModified === file.lastModified
      && same.file.webkitRelativePath === file.webkitRelativePath && same.path === path && file.webkitRelativePath) {
    return; // the same folder chosen again
  }
  // Picked files (no folder path) may share a name: each keeps its own row, in the order chosen.
  for (let n = 2; state.byPath.has(path); n++) path = `${path.replace(/ \(\d+\)$/, "")} (${n})`;
  const entry = { file, path, size: file.size, header: null, skipped: null, status: "reading", sent: 0 };
  if (!state.timings.firstFile) state.timings.firstFile = performance.now();
  state.byPath.set(path, entry);
  state.files.push(entry);
  state.readQueue.push(entry);
  pumpReads();
  refresh();
}

function pumpReads() {
  while (state.reading < READ_CONCURRENCY && state.readQueue.length) {
    const entry = state.readQueue.shift();
    state.reading++;
    readHeader(entry.file).then((header) => {
      if (header.skipped) { entry.skipped = header.skipped; entry.status = "skipped"; }
      else { entry.header = header; entry.status = "ready"; }
    }, () => { entry.skipped = "unreadable"; entry.status = "skipped"; }).finally(() => {
      state.reading--;
      pumpReads();
      if (!state.reading && !state.readQueue.length) {
        state.timings.listed = performance.now();
        scanned();
      }
      refresh();
    });
  }
}

let refreshPending = false;
function refresh() {
  if (refreshPending) return;
  refreshPending = true;
  requestAnimationFrame(() => {
    refreshPending = false;
    const skipped = state.files.filter((f) => f.skipped).length;
    const dicom = state.files.filter((f) => f.header).length;
    $("scan-status").textContent = state.reading || state.readQueue.length
      ? `Reading ${state.files.length - state.readQueue.length - state.reading} of ${state.files.length} files…`
      : `${dicom} DICOM files, ${skipped} skipped`;
    $("file-counts").textContent = `(${state.files.length})`;
    $("files-section").hidden = !state.files.length;
    list.setCount(state.files.length);
    list.render();
    if (state.running || state.batch) totals(); // progress: only once sending
  });
}

function rowOf(index) {
  const entry = state.files[index];
  const h = entry.header;
  const what = entry.skipped ? `skipped: ${entry.skipped}`
    : entry.status === "uploading" || entry.status === "paused"
      ? `${entry.status} ${Math.floor((100 * entry.sent) / (entry.size || 1))} %`
      : entry.status === "error" ? `error: ${entry.error}` : entry.status;
  return el("div", { class: `row ${entry.status}`, role: "listitem", "data-path": entry.path },
    el("span", { class: "path" }, entry.path),
    el("span", { class: "size" }, human(entry.size)),
    el("span", { class: "who" }, h ? `${h.patientId || "(no PatientID)"} · ${h.modality}` : ""),
    el("span", { class: "state" }, what));
}

// -- grouping, template, overrides ---------------------------------------------------------

function groups() {
  const patients = new Map();
  const studies = new Map();
  for (const f of state.files) {
    if (!f.header) continue;
    const p = f.header.patientId;
    if (!patients.has(p)) patients.set(p, { id: p, name: f.header.patientName, studies: new Set(), files: 0 });
    patients.get(p).studies.add(f.header.study);
    patients.get(p).files++;
    if (!studies.has(f.header.study)) studies.set(f.header.study, { uid: f.header.study, patients: new Set(), files: [] });
    studies.get(f.header.study).patients.add(p);
    studies.get(f.header.study).files.push(f);
  }
  return { patients, studies };
}

function scanned() {
  const { patients, studies } = groups();
  $("attributes").hidden = !patients.size;
  const warnings = $("warnings");
  warnings.replaceChildren();
  for (const [uid, study] of studies) {
    if (study.patients.size > 1) {
      // The CLI's warning, word for word.
      warnings.append(el("p", { class: "warning" },
        `WARNING: study ${uid} holds ${study.patients.size} different PatientIDs`));
    }
  }
  const box = $("patients");
  const kept = new Map([...box.querySelectorAll("textarea")].map((t) => [t.dataset.patient, t.value]));
  box.replaceChildren(...[...patients.values()].map((p) => el("div", { class: "patient" },
    el("label", {}, el("strong", {}, p.id || "(no PatientID)"),
      ` ${p.name} · ${p.studies.size} stud${p.studies.size === 1 ? "y" : "ies"}, ${p.files} files`,
      el("textarea", { rows: 2, "data-patient": p.id, placeholder: "override: Keyword=value, one a line",
        "aria-label": `override for ${p.id}` })))));
  for (const t of box.querySelectorAll("textarea")) if (kept.has(t.dataset.patient)) t.value = kept.get(t.dataset.patient);
}

function valueRow(keyword = "", value = "") {
  return el("tr", {},
    el("td", {}, el("input", { class: "kw", value: keyword, "aria-label": "attribute keyword" })),
    el("td", {}, el("input", { class: "val", value, "aria-label": "attribute value" })),
    el("td", {}, el("button", { type: "button", class: "link", onclick: (e) => e.target.closest("tr").remove() }, "remove")));
}

async function loadTemplates() {
  try {
    state.templates = (await api("GET", "/api/v1/templates")).templates;
  } catch (error) { state.templates = []; }
  $("template").append(...state.templates.map((t) => el("option", { value: t.name }, t.name)));
}

function chooseTemplate() {
  const chosen = state.templates.find((t) => t.name === $("template").value);
  const body = $("template-values").tBodies[0];
  body.replaceChildren(...Object.entries(chosen ? chosen.attributes : {}).map(([k, v]) =>
    valueRow(k, Array.isArray(v) ? v.join("\\") : v)));
}

function parseLines(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`"${line.trim()}": write Keyword=value`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

function batchFields() {
  // The template's values as edited: the template is named (the batch records it), and any
  // value changed or added on the screen goes into every patient's override, under that
  // patient's own override values (the more specific wins, as on the server).
  const template = state.templates.find((t) => t.name === $("template").value);
  const edited = {};
  for (const row of $("template-values").tBodies[0].rows) {
    const keyword = row.querySelector(".kw").value.trim();
    if (keyword) edited[keyword] = row.querySelector(".val").value;
  }
  const changed = {};
  const original = template ? template.attributes : {};
  for (const [k, v] of Object.entries(edited)) {
    const was = original[k];
    if ((Array.isArray(was) ? was.join("\\") : was) !== v) changed[k] = v;
  }
  const removed = Object.keys(original).filter((k) => !(k in edited));
  const overrides = {};
  for (const t of $("patients").querySelectorAll("textarea")) {
    const own = parseLines(t.value);
    const merged = { ...changed, ...own };
    for (const k of removed) if (!(k in merged)) merged[k] = null;
    if (Object.keys(merged).length) overrides[t.dataset.patient] = merged;
  }
  return { template: template ? template.name : undefined, overrides };
}

// -- uploading -----------------------------------------------------------------------------

async function openBatch() {
  let fields;
  try { fields = batchFields(); } catch (error) { $("form-error").textContent = error.message; return null; }
  const overrides = Object.fromEntries(Object.entries(fields.overrides).map(([p, values]) =>
    [p, Object.fromEntries(Object.entries(values).filter(([, v]) => v !== null))]));
  try {
    const batch = await api("POST", "/api/v1/batches", {
      label: "upload screen", hold: true, template: fields.template,
      overrides: Object.keys(overrides).length ? overrides : undefined,
    });
    localStorage.setItem(BATCH_KEY, String(batch.id));
    return batch;
  } catch (error) {
    $("form-error").textContent = error.message; // the API's own message
    return null;
  }
}

async function resumableBatch() {
  const id = localStorage.getItem(BATCH_KEY);
  if (!id) return null;
  try {
    const report = await api("GET", `/api/v1/batches/${id}`);
    if (report.state === "open" && report.held) return report;
  } catch (error) { /* gone or another user's: start afresh */ }
  localStorage.removeItem(BATCH_KEY);
  return null;
}

function markAlreadySent(report) {
  // Files the batch holds already (after a reload): by SOPInstanceUID once parsed, else by
  // name and length; the rest resume from their tus offset.
  const bySop = new Set(report.files.filter((f) => f.sop_instance_uid).map((f) => f.sop_instance_uid));
  const byName = new Map();
  for (const f of report.files) {
    if (f.state === "receiving" || f.state === "terminated" || f.state === "expired") continue;
    const key = `${f.filename}|${f.length}`;
    byName.set(key, (byName.get(key) || 0) + 1);
  }
  const ours = new Map();
  for (const f of state.files) {
    if (!f.header) continue;
    const key = `${f.path.split("/").pop()}|${f.size}`;
    ours.set(key, (ours.get(key) || 0) + 1);
  }
  for (const f of state.files) {
    if (!f.header || f.status === "done") continue;
    const key = `${f.path.split("/").pop()}|${f.size}`;
    if (bySop.has(f.header.sop) || (byName.get(key) === 1 && ours.get(key) === 1)) {
      f.status = "done"; f.sent = f.size; f.resumed = true;
    }
  }
}

function fingerprint(file, options) {
  // A File's name, size, type and lastModified, its path in the folder (two folders often
  // hold files of the same name) and the batch: the same file chosen again after a reload
  // finds its upload.
  const entry = state.byFile.get(file);
  return Promise.resolve(["relaypacs", state.batch.id, entry ? entry.path : file.name, file.size,
    file.type, file.lastModified, options.endpoint].join("|"));
}

async function sendOne(entry) {
  entry.status = "uploading";
  // Web Crypto digests a whole buffer (no streaming): files up to 512 MB are read once for
  // it; beyond, the file goes without a declared whole-file checksum (each chunk's sha256 is
  // recorded by the server and checked again when the file is assembled).
  if (!entry.checksum && entry.size <= CHECKSUM_MAX_BYTES) entry.checksum = await sha256Base64(entry.file);
  return new Promise((resolve) => {
    const upload = new tus.Upload(entry.file, {
      endpoint: "/api/v1/files",
      headers: { "X-CSRF-Token": csrf() },
      chunkSize: state.chunkSize,
      // The first chunk (a whole small file) rides on the creation POST: one round trip per
      // file instead of two, which is most of a small file's time on a distant link.
      uploadDataDuringCreation: true,
      retryDelays: [0, 1000, 3000, 5000, 10000, 20000],
      metadata: { filename: entry.path, batch_id: String(state.batch.id),
        ...(entry.checksum ? { checksum: `sha256 ${entry.checksum}` } : {}) },
      fingerprint,
      removeFingerprintOnSuccess: true,
      onProgress: (sent) => {
        // Resumed: where the server said the upload stood (the bytes before it are not sent again).
        if (entry.resumed && entry.resumedFrom === undefined) entry.resumedFrom = upload._offset;
        entry.sent = sent;
        refresh();
      },
      onSuccess: () => { entry.status = "done"; entry.sent = entry.size; entry.upload = null; refresh(); resolve(); },
      onError: (error) => {
        const status = error.originalResponse ? error.originalResponse.getStatus() : 0;
        entry.status = "error";
        entry.error = status ? `${status} ${error.originalResponse.getBody().slice(0, 200)}` : error.message;
        refresh();
        resolve();
      },
    });
    entry.upload = upload;
    upload.findPreviousUploads().then((previous) => {
      if (previous.length) {
        upload.resumeFromPreviousUpload(previous[0]);
        entry.resumed = true;
      }
      if (state.paused) { entry.status = "paused"; resolve(); return; }
      upload.start();
    });
  });
}

async function runQueue() {
  state.running = true;
  if (!state.startedAt) state.startedAt = performance.now();
  const todo = () => state.files.find((f) => f.header && (f.status === "ready" || f.status === "paused") && !state.active.has(f));
  const worker = async () => {
    for (;;) {
      if (state.paused) return;
      const entry = todo();
      if (!entry) return;
      state.active.add(entry);
      if (!state.timings.firstByte) state.timings.firstByte = performance.now();
      try { await sendOne(entry); } finally { state.active.delete(entry); }
    }
  };
  await Promise.all(Array.from({ length: state.parallel }, worker));
  state.running = false;
  if (state.paused) return;
  const unfinished = state.files.filter((f) => f.header && f.status !== "done");
  if (!unfinished.length) {
    state.timings.uploaded = performance.now();
    followUp();
  }
}

async function start() {
  $("form-error").textContent = "";
  if (!state.batch || state.resumePending) {
    // resumePending: the batch's board was opened from the reload note before the files were
    // chosen again; the files it holds are found now, so they are not sent twice.
    state.resumePending = false;
    const resumable = await resumableBatch();
    if (state.batch && (!resumable || resumable.id !== state.batch.id)) board = null;
    state.batch = resumable || await openBatch();
    if (!state.batch) return;
    if (resumable) markAlreadySent(resumable);
  }
  state.byFile = new Map(state.files.map((f) => [f.file, f]));
  state.paused = false;
  $("start").disabled = true;
  $("pause").disabled = false;
  $("pause").textContent = "Pause";
  runQueue();
}

function pause() {
  if (!state.paused) {
    state.paused = true;
    for (const entry of state.active) {
      if (entry.upload) entry.upload.abort();
      entry.status = "paused";
    }
    $("pause").textContent = "Resume";
  } else {
    start();
  }
  refresh();
}

function totals() {
  const sending = state.files.filter((f) => f.header);
  const total = sending.reduce((n, f) => n + f.size, 0);
  const sent = sending.reduce((n, f) => n + f.sent, 0);
  const done = sending.filter((f) => f.status === "done").length;
  $("total-progress").max = total || 1;
  $("total-progress").value = sent;
  $("total-text").textContent = `${done} of ${sending.length} files, ${human(sent)} of ${human(total)}`;
  const { studies } = groups();
  for (const [uid, study] of studies) {
    const bytes = study.files.reduce((n, f) => n + f.size, 0);
    const got = study.files.reduce((n, f) => n + f.sent, 0);
    let row = document.querySelector(`#study-progress [data-study="${CSS.escape(uid)}"]`);
    if (!row) {
      row = el("li", { "data-study": uid }, el("span", {}, uid), " ", el("progress", { max: 1, value: 0 }), el("span", { class: "pct" }));
      $("study-progress").append(row);
    }
    row.querySelector("progress").max = bytes || 1;
    row.querySelector("progress").value = got;
    row.querySelector(".pct").textContent = ` ${Math.floor((100 * got) / (bytes || 1))} %`;
  }
}

// -- follow-up ----------------------------------------------------------------------------

let board;
async function followUp() {
  $("follow-up").hidden = false;
  $("batch-id").textContent = state.batch.id;
  $("pause").disabled = true;
  const { Board } = await import("./board.js"); // only when a batch is there to organise
  board = board || new Board($("board"), state.batch.id, onBoardChange);
  await board.load();
  watch();
}

function onBoardChange() { poll(); }

async function poll() {
  const report = await api("GET", `/api/v1/batches/${state.batch.id}`);
  $("batch-state").textContent = report.held ? "held until you confirm" : report.state;
  $("confirm").disabled = !report.held;
  const rows = report.studies.map((s) => el("tr", { "data-study": s.study_instance_uid },
    el("td", {}, s.study_instance_uid), el("td", {}, s.patient_id || ""), el("td", {}, s.study_date || ""),
    el("td", {}, s.modality || ""), el("td", {}, String(s.instances)),
    el("td", { class: "delivery" }, Object.entries(s.deliveries).map(([d, c]) =>
      `${d}: ${Object.entries(c).map(([k, n]) => `${n} ${k}`).join(", ")}`).join("; ") || (report.held ? "held" : "waiting"))));
  $("studies").tBodies[0].replaceChildren(...rows);
  $("quarantined").replaceChildren(...report.files.filter((f) => f.state === "quarantined").map((f) =>
    el("li", {}, `${f.filename}: ${f.quarantine_reason}${f.quarantine_detail ? ` (${f.quarantine_detail})` : ""}`)));
  if (board) {
    // Files still being parsed when the board opened: it follows as their studies appear.
    const shape = JSON.stringify(report.studies.map((s) => [s.study_instance_uid, s.instances, s.series]));
    if (shape !== state.boardShape) { state.boardShape = shape; board.load(); }
    board.problems(report.problems);
  }
  if (report.state === "done") localStorage.removeItem(BATCH_KEY);
  return report;
}

let watching = false;
function watch() {
  if (watching) return;
  watching = true;
  poll();
  // Live from the event stream; a slow poll as well, for a proxy without it.
  const url = document.body.dataset.eventsUrl;
  if (url && window.EventSource) {
    const source = new EventSource(url, { withCredentials: true });
    let timer;
    source.onmessage = () => { clearTimeout(timer); timer = setTimeout(poll, 300); };
    for (const type of ["study.forwarded", "upload.completed"]) {
      source.addEventListener(type, source.onmessage);
    }
  }
  setInterval(poll, 3000);
}

async function confirmBatch() {
  $("confirm").disabled = true;
  try {
    await api("POST", `/api/v1/batches/${state.batch.id}/confirm`);
  } catch (error) {
    $("form-error").textContent = error.message;
  }
  poll();
}

// -- page ----------------------------------------------------------------------------------

function uploadPage() {
  list = new VirtualList($("files"), 24, rowOf);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    state.timings.dropped = performance.now();
    filesOfDrop(e.dataTransfer, addFile);
  });
  for (const id of ["pick-folder", "pick-files"]) {
    $(id).addEventListener("change", (e) => {
      state.timings.dropped = performance.now();
      filesOfInput(e.target, addFile);
      e.target.value = "";
    });
  }
  $("template").addEventListener("change", chooseTemplate);
  $("add-value").addEventListener("click", () => $("template-values").tBodies[0].append(valueRow()));
  $("start").addEventListener("click", start);
  $("pause").addEventListener("click", pause);
  $("confirm").addEventListener("click", confirmBatch);
  $("new-batch").addEventListener("click", () => { localStorage.removeItem(BATCH_KEY); location.reload(); });
  document.querySelector("#attributes .totals").after(el("ul", { id: "study-progress" }));
  loadTemplates();
  resumableBatch().then((report) => {
    if (report) {
      $("resume-note").hidden = false;
      // Its files sent already can be organised and confirmed without choosing them again.
      $("resume-note").replaceChildren(
        `Batch ${report.id} was not finished: choose the same folder again to resume it, or `,
        el("button", { type: "button", class: "link", id: "open-board",
          onclick: () => {
            if (!state.batch) { state.batch = report; state.resumePending = true; }
            followUp();
          } }, "organise what it holds"),
        ".");
    }
  });
  document.body.dataset.ready = "1";
  state.timings.interactive = performance.now();
}

if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch(() => {});
if (document.body.dataset.page === "capture") import("./phone.js").then((m) => m.capturePage());
else uploadPage();
