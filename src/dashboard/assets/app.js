// whatsapp-host dashboard: live updates without a reload. Every 2 s (while the tab is visible)
// it asks for the current page with the live region's ETag; the server answers 304 when
// nothing changed, or the page, whose <main id="live"> then replaces this one.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live || !window.fetch || !window.DOMParser) {
    if (status) status.textContent = "Reload to see new events.";
    return;
  }
  var busy = false;

  function openDetails() {
    var open = {};
    live.querySelectorAll("details[open][id]").forEach(function (d) { open[d.id] = true; });
    return open;
  }

  function tick() {
    if (busy || document.hidden) return;
    busy = true;
    var headers = { "X-Dashboard-Live": "1" };
    var etag = live.getAttribute("data-etag");
    if (etag) headers["If-None-Match"] = etag;
    fetch(window.location.href, { headers: headers, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { window.location.reload(); return; }
        if (response.status === 304) { stamp("Live"); return; }
        if (!response.ok) { stamp("Live updates paused (HTTP " + response.status + ")"); return; }
        return response.text().then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (!fresh) return;
          var open = openDetails();
          fresh.querySelectorAll("details[id]").forEach(function (d) { if (open[d.id]) d.open = true; });
          live.replaceWith(fresh);
          live = fresh;
          stamp("Updated");
        });
      })
      .catch(function () { stamp("Live updates paused (server unreachable)"); })
      .then(function () { busy = false; });
  }

  function stamp(word) {
    if (!status) return;
    var t = new Date();
    status.textContent = word + " " + t.toISOString().slice(11, 19) + " UTC.";
  }

  setInterval(tick, 2000);
  document.addEventListener("visibilitychange", tick);
})();
