// The study board: a card per study of the batch with its series; a series is dragged
// (SortableJS: mouse and touch) or sent with its "Move to" menu (keyboard) to another study
// or to "new study". The preview is the server's dry run of the move (the attributes the
// moved instances will go out with); the move itself goes through the moves API.
// The board is never drawn anew under a person's hands: while a drag is on or a preview is
// open, new data from the server waits, and is drawn once the drag or the preview ends.
import Sortable from "sortablejs";
import { api, el } from "./api.js";

const NEW_STUDY = "__new__";

export class Board {
  constructor(root, batchId, onChange) {
    this.root = root;
    this.batchId = batchId;
    this.onChange = onChange;
    this.studies = [];
    this.open = new Set();
    // A series' instances as the server files them ([{sop_instance_uid, filename}]), asked
    // for when the series is opened: single instances can be moved from any session, after a
    // reload too, without the files being chosen again. Asked again whenever the studies change.
    this.instances = new Map();
    this.dragging = false;
    this.dialog = null; // the open preview
    this.pending = null; // the latest studies that arrived while busy
    this.drawn = null; // what the board was last drawn from
  }

  async load() {
    await this.show(await api("GET", `/api/v1/batches/${this.batchId}/studies`));
  }

  busy() {
    return this.dragging || this.dialog !== null;
  }

  async show(data) {
    // Drawing replaces every list: a drag in progress would lose its element and its
    // Sortable, and a preview its rows. The data waits (only the latest), and is shown at
    // the end; the open series' instances are asked for before, so checked again after.
    if (this.busy()) { this.pending = data; return; }
    const instances = await this.instancesNow();
    if (this.busy()) { this.pending = data; return; }
    this.problems(data.problems);
    // The same as drawn (the first poll after opening asks again): not drawn again, so an
    // element a person is about to click or has focused stays where it is.
    if (JSON.stringify([data.studies, [...instances]]) === this.drawn) return;
    this.studies = data.studies;
    this.instances = instances;
    this.render();
  }

  settle() {
    if (this.busy() || !this.pending) return;
    const data = this.pending;
    this.pending = null;
    this.show(data);
  }

  problems(list) {
    let box = this.root.querySelector(".problems");
    if (!box) { box = el("ul", { class: "problems", "aria-live": "polite" }); this.root.prepend(box); }
    box.replaceChildren(...(list || []).map((p) => el("li", { class: "problem", "data-code": p.code },
      `${p.study_instance_uid}: ${p.message}`)));
  }

  targets(except) {
    return this.studies.filter((s) => s.study_instance_uid !== except);
  }

  render() {
    this.drawn = JSON.stringify([this.studies, [...this.instances]]);
    const cards = this.studies.map((study) => {
      const series = el("ul", { class: "series", "data-study": study.study_instance_uid },
        study.series.map((s) => this.seriesItem(study, s)));
      return el("article", { class: "card", "data-study": study.study_instance_uid },
        el("h4", {}, `${study.patient_ids.join(", ") || "(no PatientID)"} · ${study.study_dates.join(", ")}`),
        el("p", { class: "meta" }, `${study.description || ""} ${study.modality || ""} · ${study.series.length} series, ${study.instances} instances`),
        el("p", { class: "uid" }, study.study_instance_uid),
        series);
    });
    const fresh = el("article", { class: "card new-study", "data-study": NEW_STUDY },
      el("h4", {}, "New study"), el("ul", { class: "series", "data-study": NEW_STUDY }));
    const grid = el("div", { class: "cards" }, cards, fresh);
    const old = this.root.querySelector(".cards");
    if (old) old.replaceWith(grid); else this.root.append(grid);
    for (const list of grid.querySelectorAll("ul.series, ul.instances")) {
      Sortable.create(list, {
        group: "series", sort: false, animation: 120, delayOnTouchOnly: true, delay: 150,
        // Mouse drags go through Sortable's pointer-event path, the one touch uses, not the
        // browser's HTML5 drag and drop: one behaviour for mouse, pen and finger, and the same
        // input a person's mouse gives is what the browser test drives (headless Chromium
        // starts no native drag session from mouse input). 3 px of slack keeps clicks clicks.
        forceFallback: true, fallbackTolerance: 3,
        // From the press (a draw between it and the first move would lose the drag too) to
        // the drop; released after this drop's own handlers (onAdd opens the preview) ran.
        onChoose: () => { this.dragging = true; },
        onUnchoose: () => this.dropped(),
        onEnd: () => this.dropped(),
        onAdd: (event) => {
          const to = event.to.dataset.study;
          const { series, sop } = event.item.dataset;
          event.from.insertBefore(event.item, event.from.children[event.oldIndex] || null); // the server decides
          this.preview(sop ? { sop_instance_uids: [sop] } : { series_instance_uids: [series] }, to);
        },
      });
    }
  }

  dropped() {
    setTimeout(() => { this.dragging = false; this.settle(); });
  }

  moveMenu(study, label, what) {
    const menu = el("select", { class: "move-to", "aria-label": `move ${label} to` },
      el("option", { value: "" }, "Move to…"),
      this.targets(study.study_instance_uid).map((t) => el("option", { value: t.study_instance_uid },
        `${t.patient_ids.join(", ")} ${t.description || ""} (${t.study_instance_uid.slice(-12)})`)),
      el("option", { value: NEW_STUDY }, "a new study"));
    menu.addEventListener("change", () => { if (menu.value) this.preview(what, menu.value); });
    return menu;
  }

  seriesItem(study, s) {
    const uid = s.series_instance_uid;
    const known = this.instances.get(uid) || [];
    const item = el("li", { class: "series-item", tabindex: "0", "data-series": uid },
      el("span", {}, `${s.modality || "?"} · ${s.instances} instances${s.moved_in ? " · moved in" : ""}`),
      el("span", { class: "uid" }, uid),
      this.moveMenu(study, `series ${uid}`, { series_instance_uids: [uid] }));
    if (s.instances > 1) {
      const open = this.open.has(uid) && this.instances.has(uid);
      const toggle = el("button", { type: "button", class: "link instances-toggle", "aria-expanded": String(open) },
        open ? "hide instances" : `${s.instances} instances…`);
      toggle.addEventListener("click", () => this.toggle(uid));
      item.append(toggle);
      if (open) {
        item.append(el("ul", { class: "instances", "data-study": study.study_instance_uid },
          known.map((i) => el("li", { class: "instance-item", tabindex: "0", "data-sop": i.sop_instance_uid },
            el("span", {}, i.filename || i.sop_instance_uid),
            this.moveMenu(study, `instance ${i.sop_instance_uid}`, { sop_instance_uids: [i.sop_instance_uid] })))));
      }
    }
    return item;
  }

  async instancesOf(seriesUid) {
    const data = await api("GET",
      `/api/v1/batches/${this.batchId}/series/${encodeURIComponent(seriesUid)}/instances`);
    return data.instances;
  }

  async instancesNow() {
    // The studies changed (a move, files parsed): the open series are asked for again; one
    // that no longer holds this batch's instances closes.
    const fresh = new Map();
    await Promise.all([...this.open].map(async (uid) => {
      try { fresh.set(uid, await this.instancesOf(uid)); } catch (error) { this.open.delete(uid); }
    }));
    return fresh;
  }

  async toggle(seriesUid) {
    if (this.open.has(seriesUid)) {
      this.open.delete(seriesUid);
    } else {
      this.instances.set(seriesUid, await this.instancesOf(seriesUid));
      this.open.add(seriesUid);
    }
    this.render();
  }

  async preview(what, to) {
    const body = { ...what, ...(to === NEW_STUDY ? { new_study: true } : { target_study_instance_uid: to }) };
    const dialog = el("dialog", { class: "preview" });
    document.body.append(dialog);
    this.dialog = dialog;
    dialog.addEventListener("close", () => this.close(dialog)); // Escape closes it too
    try {
      const answer = await api("POST", `/api/v1/batches/${this.batchId}/moves`, { ...body, dry_run: true });
      // Elements the target's first instance lacks come back null (removed): not listed.
      const rows = Object.entries(answer.attributes).filter(([, v]) => v !== null).map(([k, v]) =>
        el("tr", {}, el("th", {}, k), el("td", {}, Array.isArray(v) ? v.join("\\") : v)));
      dialog.append(
        el("h3", {}, `Move ${answer.moved_instances} instances ${answer.new_study ? "to a new study" : "to this study"}`),
        el("p", {}, "They will go out with:"),
        el("table", { class: "values" }, rows),
        el("p", {},
          el("button", { type: "button", class: "primary", id: "do-move", onclick: () => this.move(body, dialog) }, "Move"),
          " ", el("button", { type: "button", onclick: () => this.close(dialog) }, "Cancel")),
        el("p", { class: "error", role: "alert" }));
    } catch (error) {
      dialog.append(el("p", { class: "error", role: "alert" }, error.message),
        el("button", { type: "button", onclick: () => this.close(dialog) }, "Close"));
    }
    dialog.showModal();
    const first = dialog.querySelector("button");
    if (first) first.focus();
  }

  close(dialog) {
    if (!dialog.isConnected) return; // closed already
    dialog.remove();
    if (this.dialog === dialog) this.dialog = null;
    if (this.pending) this.settle(); else this.render();
  }

  async move(body, dialog) {
    try {
      const answer = await api("POST", `/api/v1/batches/${this.batchId}/moves`, body);
      // The move's answer is the server's studies after it: newer than anything waiting.
      this.pending = answer;
      this.close(dialog);
      this.onChange();
    } catch (error) {
      dialog.querySelector(".error").textContent = error.message;
    }
  }
}
