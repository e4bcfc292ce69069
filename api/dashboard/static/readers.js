// The reader assignments page: adds and ends assignments through /api/v1/reader-assignments
// (the API checks, stores and audits; the session's CSRF token goes with each write), then
// loads the page again, so the list shown is always the server's.
"use strict";
(function () {
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var error = document.getElementById("readers-error");

  function send(method, userId, facilityId, body) {
    error.textContent = "";
    return fetch("/api/v1/reader-assignments/" + userId + "/" + facilityId, {
      method: method, credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    }).then(function (answer) {
      if (answer.ok) { window.location.reload(); return; }
      return answer.json().then(function (problem) {
        error.textContent = (problem.error && problem.error.message) || ("refused: " + answer.status);
      }, function () { error.textContent = "refused: " + answer.status; });
    }, function () { error.textContent = "the server could not be reached"; });
  }

  document.getElementById("assign").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var subspecialties = document.getElementById("subspecialties").value.split(/[\s,]+/).filter(Boolean);
    send("PUT", document.getElementById("reader").value, document.getElementById("facility").value,
         { subspecialties: subspecialties });
  });
  document.getElementById("assignments").addEventListener("click", function (ev) {
    var button = ev.target.closest && ev.target.closest("button.remove");
    if (!button) return;
    var row = button.closest("tr");
    button.disabled = true;
    send("DELETE", row.getAttribute("data-user"), row.getAttribute("data-facility"));
  });
  document.body.setAttribute("data-ready", "1");
})();
