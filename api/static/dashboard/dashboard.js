// RelayPACS dashboard: draws the charts from the JSON the server embedded in the page, as
// plain SVG (no library, no build step), and makes table rows clickable for drill-down.
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var W = 560, H = 180, PAD = 28;

  function el(name, attrs, parent) {
    var node = document.createElementNS(SVG, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function frame(container) {
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "class": "plot" });
    container.appendChild(svg);
    el("line", { x1: PAD, y1: H - PAD, x2: W - 4, y2: H - PAD, "class": "axis" }, svg);
    return svg;
  }

  function label(svg, x, y, text, cls) {
    var t = el("text", { x: x, y: y, "class": cls || "tick" }, svg);
    t.textContent = text;
    return t;
  }

  function shortTime(iso, granularity) {
    return granularity === "hour" ? iso.slice(5, 13).replace("T", " ") + "h" : iso.slice(5, 10);
  }

  function bars(container, values, labels, title) {
    var svg = frame(container);
    var max = Math.max.apply(null, values.concat([1]));
    var n = Math.max(values.length, 1), step = (W - PAD - 8) / n;
    values.forEach(function (v, i) {
      var h = (H - 2 * PAD) * v / max;
      var bar = el("rect", { x: PAD + i * step + 1, y: H - PAD - h, width: Math.max(step - 2, 1), height: h,
                             "class": "bar" }, svg);
      el("title", {}, bar).textContent = labels[i] + ": " + v.toLocaleString();
    });
    var every = Math.ceil(n / 8);
    labels.forEach(function (l, i) { if (i % every === 0) label(svg, PAD + i * step, H - PAD + 14, l); });
    label(svg, 2, PAD - 6, max.toLocaleString() + (title ? " " + title : ""));
    if (!values.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  function hbars(container, mix) {
    var keys = Object.keys(mix);
    var svg = frame(container);
    var max = Math.max.apply(null, keys.map(function (k) { return mix[k]; }).concat([1]));
    var row = Math.min(24, (H - 2 * PAD) / Math.max(keys.length, 1));
    keys.forEach(function (k, i) {
      var w = (W - 200) * mix[k] / max;
      label(svg, 4, PAD + i * row + row * 0.7, k);
      el("rect", { x: 150, y: PAD + i * row + 2, width: Math.max(w, 1), height: row - 4,
                   "class": "bar status-" + k.replace(/[^a-z]/g, "") }, svg);
      label(svg, 154 + w, PAD + i * row + row * 0.7, mix[k].toLocaleString());
    });
    if (!keys.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  function lines(container, series, granularity) {
    var svg = frame(container);
    var p50 = series.map(function (p) { return p.latency.p50_ms; });
    var p95 = series.map(function (p) { return p.latency.p95_ms; });
    var max = Math.max.apply(null, p95.concat(p50).filter(function (v) { return v !== null; }).concat([1]));
    var n = Math.max(series.length - 1, 1);
    [[p50, "p50"], [p95, "p95"]].forEach(function (pair) {
      var pts = [];
      pair[0].forEach(function (v, i) {
        if (v === null) return;
        pts.push((PAD + i * (W - PAD - 8) / n).toFixed(1) + "," + (H - PAD - (H - 2 * PAD) * v / max).toFixed(1));
      });
      if (pts.length) el("polyline", { points: pts.join(" "), "class": "line " + pair[1] }, svg);
    });
    label(svg, 2, PAD - 6, (max / 1000).toFixed(1) + " s (p50 solid, p95 dashed)");
    var every = Math.ceil(series.length / 8);
    series.forEach(function (p, i) {
      if (i % every === 0) label(svg, PAD + i * (W - PAD - 8) / n, H - PAD + 14, shortTime(p.t, granularity));
    });
    if (!series.length) label(svg, W / 2 - 30, H / 2, "no data", "empty");
  }

  function draw() {
    var source = document.getElementById("dashboard-data");
    if (!source) return;
    var data = JSON.parse(source.textContent);
    var g = data.range.granularity;
    document.querySelectorAll("[data-chart]").forEach(function (c) {
      var kind = c.getAttribute("data-chart");
      if (kind === "volume") {
        bars(c, data.series.map(function (p) { return p.uploads; }),
             data.series.map(function (p) { return shortTime(p.t, g); }), "uploads");
      } else if (kind === "status") {
        hbars(c, data.status_mix || {});
      } else if (kind === "latency") {
        lines(c, data.series, g);
      }
    });
    document.querySelectorAll("tr[data-href]").forEach(function (row) {
      row.addEventListener("click", function (ev) {
        if (ev.target.tagName !== "A") window.location.href = row.getAttribute("data-href");
      });
    });
    document.body.setAttribute("data-charts-drawn", "1");
    if (window.performance && performance.mark) performance.mark("charts-drawn");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
