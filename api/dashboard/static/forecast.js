// RelayPACS dashboard, forecast charts: the facility's newest stored forecasts
// (embedded as #forecast-data by the _forecast partial) drawn as plain SVG: the 95% band,
// the 80% band over it, the mean as a line with a point per day or hour. Separate from
// dashboard.js so the two evolve independently (both draw with plot.js); marks the section
// data-drawn="1" when done.
"use strict";
(function () {
  var plot = window.RelayPACSPlot;
  var W = plot.W, H = plot.H, PAD = plot.PAD, el = plot.el, text = plot.label;

  function draw(container, forecast, granularity) {
    var svg = plot.frame(container);
    var points = (forecast && forecast.points) || [];
    if (!points.length) {
      text(svg, W / 2 - 60, H / 2, "no forecast yet", "empty");
      return;
    }
    var key = granularity === "hour" ? "hour" : "day";
    var max = Math.max.apply(null, points.map(function (p) { return p.hi95 || 0; }).concat([1]));
    var step = (W - PAD - 8) / Math.max(points.length - 1, 1);
    function x(i) { return PAD + i * step; }
    function y(v) { return H - PAD - (H - 2 * PAD) * (v || 0) / max; }
    function band(lo, hi, cls) {
      var top = points.map(function (p, i) { return x(i) + "," + y(p[hi]); });
      var bottom = points.map(function (p, i) { return x(i) + "," + y(p[lo]); }).reverse();
      el("polygon", { points: top.concat(bottom).join(" "), "class": cls }, svg);
    }
    band("lo95", "hi95", "band95");
    band("lo80", "hi80", "band80");
    el("polyline", { points: points.map(function (p, i) { return x(i) + "," + y(p.mean); }).join(" "),
                     "class": "fc-line" }, svg);
    points.forEach(function (p, i) {
      var dot = el("circle", { cx: x(i), cy: y(p.mean), r: granularity === "hour" ? 1.5 : 2.5, "class": "fc-point" }, svg);
      el("title", {}, dot).textContent = p[key] + ": " + p.mean + " (80% " + p.lo80 + "–" + p.hi80 +
        ", 95% " + p.lo95 + "–" + p.hi95 + ")";
    });
    var every = Math.ceil(points.length / 7);
    points.forEach(function (p, i) {
      if (i % every === 0) {
        var at = p[key];
        text(svg, x(i), H - PAD + 14, granularity === "hour" ? at.slice(8, 13).replace("T", " ") + "h" : at.slice(5, 10));
      }
    });
    text(svg, 2, PAD - 6, Math.round(max).toLocaleString() + " (95% upper)");
  }

  function start() {
    var source = document.getElementById("forecast-data");
    var section = document.getElementById("forecast");
    if (!source || !section) return;
    var data = JSON.parse(source.textContent || "{}") || {};
    section.querySelectorAll("[data-forecast-chart]").forEach(function (c) {
      var granularity = c.getAttribute("data-forecast-chart");
      draw(c, data[granularity], granularity);
    });
    section.setAttribute("data-drawn", "1");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();

  // The closures form: filled from the facility's calendar, saved with PUT
  // /api/v1/forecasts/calendars/<facility> (the session cookie and the page's CSRF token).
  function calendarForm() {
    var section = document.getElementById("forecast-calendar");
    var form = document.getElementById("forecast-calendar-form");
    var embedded = document.getElementById("forecast-calendar-data");
    if (!section || !form || !embedded) return;
    var cal = JSON.parse(embedded.textContent || "{}") || {};
    form.country.value = cal.country || "";
    form.subdivision.value = cal.subdivision || "";
    form.closes_on_public_holidays.checked = !!cal.closes_on_public_holidays;
    form.closed_days.value = (cal.closed_days || []).join("\n");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var status = document.getElementById("forecast-calendar-status");
      var token = document.querySelector('meta[name="csrf-token"]');
      var body = {
        country: form.country.value.trim() || null,
        subdivision: form.subdivision.value.trim() || null,
        closes_on_public_holidays: form.closes_on_public_holidays.checked,
        closed_days: form.closed_days.value.split(/\s+/).filter(function (d) { return d; })
      };
      fetch("/api/v1/forecasts/calendars/" + section.getAttribute("data-facility"), {
        method: "PUT", credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": token ? token.content : "" },
        body: JSON.stringify(body)
      }).then(function (r) {
        return r.json().then(function (j) {
          status.textContent = r.ok ? "saved: used from the next forecast run" : (j.error || "not saved");
          section.setAttribute("data-saved", r.ok ? "1" : "0");
        });
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", calendarForm);
  else calendarForm();
})();
