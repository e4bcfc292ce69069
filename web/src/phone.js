// The phone page: a photo from the camera (JPEG or HEIC) is queued in the page, sent by tus
// into a batch of its own with the patient's details (a picked study, or typed fields) when
// the phone has signal (tus resumes a cut upload), and forgotten once sent: the File, its
// preview and the upload's resume entry are all dropped.
import * as tus from "tus-js-client";
import { api, csrf, el, sha256Base64 } from "./api.js";

const $ = (id) => document.getElementById(id);
const FIELDS = ["patient_id", "patient_name", "patient_birth_date", "patient_sex", "study_description",
  "accession_number"];
const queue = [];
let sending = false;

function photoType(file) {
  const name = file.name.toLowerCase();
  if (file.type === "image/heic" || file.type === "image/heif" || name.endsWith(".heic") || name.endsWith(".heif")) return "image/heic";
  if (file.type === "image/jpeg" || name.endsWith(".jpg") || name.endsWith(".jpeg")) return "image/jpeg";
  return null;
}

function details() {
  const target = $("target-study").value;
  if (target) return { target_study: target };
  const out = {};
  for (const f of FIELDS) if ($(f).value.trim()) out[f] = $(f).value.trim();
  if (!out.patient_id) throw new Error("pick a study or type the Patient ID");
  if (out.patient_birth_date && !/^\d{8}$/.test(out.patient_birth_date)) throw new Error("birth date: YYYYMMDD");
  return out;
}

function showNetwork() {
  $("network-state").textContent = navigator.onLine ? "" : "No signal: photos wait here and go when it returns.";
}

async function sendPhoto(item) {
  if (!item.batchId) {
    item.batchId = (await api("POST", "/api/v1/batches", { label: "phone photo" })).id;
  }
  if (!item.checksum) item.checksum = await sha256Base64(item.file);
  await new Promise((resolve, reject) => {
    const upload = new tus.Upload(item.file, {
      endpoint: "/api/v1/files",
      uploadUrl: item.url || null, // after a cut: resume where it stopped
      headers: { "X-CSRF-Token": csrf() },
      retryDelays: [0, 1000, 3000, 5000, 10000],
      metadata: { kind: "photo", filename: item.name, filetype: item.type, batch_id: String(item.batchId),
        checksum: `sha256 ${item.checksum}`, ...item.details },
      storeFingerprintForResuming: false, // kept in the page only, never in the phone's storage
      onUploadUrlAvailable: () => { item.url = upload.url; },
      onProgress: (sent, total) => { item.row.querySelector(".state").textContent = `${Math.floor((100 * sent) / total)} %`; },
      onSuccess: () => resolve(),
      onError: (error) => reject(error),
    });
    upload.start();
  });
  await api("POST", `/api/v1/batches/${item.batchId}/complete`);
}

async function drain() {
  if (sending) return;
  sending = true;
  try {
    while (queue.length && navigator.onLine) {
      const item = queue[0];
      item.row.querySelector(".state").textContent = "sending";
      try {
        await sendPhoto(item);
      } catch (error) {
        item.row.querySelector(".state").textContent = navigator.onLine ? `error: ${error.message}` : "waiting for signal";
        if (navigator.onLine) await new Promise((r) => setTimeout(r, 3000));
        else break;
        continue;
      }
      queue.shift();
      // Sent: nothing of the patient stays on the phone.
      URL.revokeObjectURL(item.preview);
      item.row.replaceChildren(el("span", { class: "state" }, "sent"));
      item.row.dataset.sent = "1";
      item.file = null;
    }
  } finally {
    sending = false;
  }
}

async function searchStudies(q) {
  try {
    const data = await api("GET", `/api/v1/studies?q=${encodeURIComponent(q)}`);
    const select = $("target-study");
    select.replaceChildren(el("option", { value: "" }, "(type the patient below)"),
      ...data.studies.map((s) => el("option", { value: s.study_instance_uid },
        `${s.patient_id} ${s.study_date || ""} ${s.description || ""} ${s.modality || ""}`)));
  } catch (error) {
    $("study-search").disabled = true; // the server has no study list: typed fields only
  }
}

export function capturePage() {
  showNetwork();
  window.addEventListener("online", () => { showNetwork(); drain(); });
  window.addEventListener("offline", showNetwork);
  let timer;
  $("study-search").addEventListener("input", (e) => { clearTimeout(timer); timer = setTimeout(() => searchStudies(e.target.value), 300); });
  searchStudies("");
  $("camera").addEventListener("change", (e) => {
    $("photo-error").textContent = "";
    for (const file of e.target.files) {
      const type = photoType(file);
      if (!type) { $("photo-error").textContent = `${file.name}: a JPEG or HEIC photo is needed`; continue; }
      let who;
      try { who = details(); } catch (error) { $("photo-error").textContent = error.message; return; }
      const preview = URL.createObjectURL(file);
      const row = el("li", { class: "photo" }, el("img", { src: preview, alt: "" }), el("span", { class: "state" }, "queued"));
      $("photo-queue").append(row);
      queue.push({ file, name: file.name, type, details: who, preview, row });
    }
    e.target.value = "";
    drain();
  });
  document.body.dataset.ready = "1";
  window.relaypacsPhone = { queue };
}
