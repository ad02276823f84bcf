// MetaGuildNet dashboard: live updates over server-sent events. Every
// (re)connect and every change fetches a fresh copy of the page's live part
// (#live) from the server; nothing else is kept here.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var conn = document.getElementById("conn");
  var inflight = false, again = false, es = null;

  function setConn(text, cls) {
    if (!conn) return;
    conn.textContent = text;
    conn.className = "conn " + cls;
  }

  function refresh() {
    if (!live) return;
    if (inflight) { again = true; return; }
    inflight = true;
    fetch(location.pathname + location.search, { headers: { "X-Partial": "1" }, credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html !== null && html !== live.innerHTML) {
          live.innerHTML = html;
          live.dataset.updated = String(Date.now());
        }
      })
      .catch(function () {})
      .then(function () {
        inflight = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    es = new EventSource("/events");
    es.addEventListener("hello", function () { setConn("live", "ok"); refresh(); });
    es.addEventListener("change", refresh);
    es.onerror = function () {
      setConn("reconnecting…", "bad");
      // The browser retries by itself; a stream it gave up on is made anew.
      if (es.readyState === EventSource.CLOSED) { setTimeout(connect, 2000); }
    };
  }
  if (window.EventSource) connect();

  // "Diagnose now" without leaving the page; the form works without
  // script as well.
  var form = document.getElementById("diagnose-form");
  if (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var out = document.getElementById("diag-result");
      var btn = document.getElementById("diagnose-now");
      var csrf = document.querySelector('meta[name="csrf-token"]').content;
      btn.disabled = true;
      out.textContent = "Diagnosing… (verification and collectors, up to a minute)";
      fetch(form.action, { method: "POST", headers: { "X-Partial": "1", "X-CSRF-Token": csrf }, credentials: "same-origin" })
        .then(function (r) { return r.text().then(function (t) { return { ok: r.ok, status: r.status, text: t }; }); })
        .then(function (r) {
          if (r.ok) { out.innerHTML = r.text; } else { out.textContent = r.status + ": " + r.text; }
        })
        .catch(function (e) { out.textContent = "failed: " + e; })
        .then(function () { btn.disabled = false; });
    });
  }
})();
