// hookrelay inspector: the live tail and refreshing panels. No framework, no
// build step; everything written into the page goes through textContent.
"use strict";

function tail(section) {
  const rows = section.querySelector("tbody");
  const status = section.querySelector("[data-status]");
  const pause = section.querySelector("[data-pause]");
  const base = section.dataset.base;
  const keep = 200;
  let paused = false;
  let held = [];

  function cell(tr, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function show(e) {
    const tr = document.createElement("tr");
    tr.dataset.eventId = e.id;
    cell(tr, e.received_at);
    cell(tr, e.source);
    const name = cell(tr, "");
    const link = document.createElement("a");
    link.href = base + "/admin/events/" + encodeURIComponent(e.id);
    link.textContent = e.event;
    name.appendChild(link);
    cell(tr, e.tenant ? e.tenant.client_key : "–");
    const preview = e.payload_omitted
      ? "(payload left out of the live feed: open the event)"
      : JSON.stringify(e.payload === undefined ? null : e.payload).slice(0, 160);
    cell(tr, preview, "preview");
    rows.insertBefore(tr, rows.firstChild);
    while (rows.children.length > keep) rows.removeChild(rows.lastChild);
  }

  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { held.forEach(show); held = []; }
    status.textContent = paused ? "paused" : "live";
  });

  const source = new EventSource(section.dataset.stream);
  source.addEventListener("open", () => { status.textContent = paused ? "paused" : "live"; });
  source.addEventListener("error", () => { status.textContent = "reconnecting…"; });
  source.addEventListener("event", (message) => {
    let e;
    try { e = JSON.parse(message.data); } catch (err) { status.textContent = "unreadable event: " + err; return; }
    if (paused) {
      held.push(e);
      if (held.length > keep) held.shift();
      status.textContent = "paused (" + held.length + " new)";
    } else {
      try { show(e); } catch (err) { status.textContent = "cannot show an event: " + err; }
    }
  });
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.reload();
  });
  source.addEventListener("lagged", (message) => {
    const missed = JSON.parse(message.data).missed;
    status.textContent = "fell behind: " + missed + " events not shown; reconnecting…";
  });
}

function refresh(element) {
  const every = Number(element.dataset.every || 5) * 1000;
  setInterval(async () => {
    try {
      const response = await fetch(element.dataset.refresh, { credentials: "same-origin" });
      // Sent to the sign-in form: the session is over, so is the page.
      if (response.redirected) { window.location.reload(); return; }
      if (response.ok) element.innerHTML = await response.text();
    } catch (_) { /* the next tick tries again */ }
  }, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-stream]").forEach(tail);
  document.querySelectorAll("[data-refresh]").forEach(refresh);
});
