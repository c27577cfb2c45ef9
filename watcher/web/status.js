// flora-watcher status page: polls api/v1/status and draws it. No framework, no build step.
// Every string from the API is untrusted: it only ever reaches the page through textContent (never innerHTML),
// and a URL only through an href/src after safeUrl() kept it as an absolute http(s) URL.
"use strict";

(function () {
  const POLL_MS = 1500;
  const HIDDEN_POLL_MS = 10000;
  const eventNodes = new Map(); // event id -> <li>, so thumbnails are not reloaded on every poll
  let failures = 0;
  let last = null; // {now: server ms, at: performance.now()} of the last good answer
  let timer = null;
  let busy = false;

  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function safeUrl(value) {
    if (typeof value !== "string") return null;
    try {
      const url = new URL(value);
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function link(url, text, cls) {
    const a = el("a", cls, text);
    a.href = url;
    a.rel = "noopener noreferrer";
    a.target = "_blank";
    a.referrerPolicy = "no-referrer";
    return a;
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 172800) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d";
  }

  function iso(ms) {
    try {
      return new Date(ms).toISOString().replace(".000Z", "Z");
    } catch (e) {
      return "";
    }
  }

  // A span showing "3m 05s ago", refreshed from the server's clock on every poll.
  function agoSpan(ms) {
    const span = el("span", "ago");
    if (typeof ms === "number") {
      span.dataset.ms = String(ms);
      span.title = iso(ms);
    }
    return span;
  }

  function refreshAges(now) {
    for (const span of document.querySelectorAll(".ago[data-ms]")) {
      span.textContent = duration(now - Number(span.dataset.ms)) + " ago";
    }
  }

  function subject(item) {
    if (item.technique) return item.technique;
    if (item.model) return "model " + item.model;
    return "(technique unknown)";
  }

  function badge(text, kind) {
    return el("span", "badge " + kind, text);
  }

  function show(list, emptyId, nodes) {
    list.replaceChildren(...nodes);
    $(emptyId).hidden = nodes.length > 0;
  }

  function activeRun(run) {
    const li = el("li", "run");
    const head = el("div", "line");
    const known = ["pending", "running"].includes(run.status) ? run.status : "other"; // API text never names a class
    head.append(badge(run.status || "unknown", "status-" + known));
    head.append(el("strong", "subject", subject(run)));
    const meta = el("div", "meta");
    meta.append(el("code", "run-id", run.run_id), el("span", "project", run.project_id || ""));
    if (typeof run.age_ms === "number") {
      meta.append(el("span", "age", duration(run.age_ms) + " old"));
    }
    const bar = el("div", "bar");
    const progress = document.createElement("progress");
    progress.max = 100;
    const label = el("span", "pct");
    if (typeof run.progress === "number") {
      progress.value = run.progress;
      label.textContent = Math.round(run.progress) + "%";
    } else {
      label.textContent = "–";
    }
    progress.setAttribute("aria-label", "progress of " + (run.run_id || "run"));
    bar.append(progress, label);
    li.append(head, meta, bar);
    return li;
  }

  function output(out) {
    if (out.kind === "text") {
      const q = el("blockquote", "text-output", out.text);
      q.title = out.label || "";
      return q;
    }
    const url = safeUrl(out.url);
    if (!url) return null;
    if (out.kind === "image") {
      const a = link(url, null, "thumb");
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.referrerPolicy = "no-referrer";
      img.alt = out.label || "output";
      img.src = url;
      a.append(img);
      return a;
    }
    const names = { video: "▶ video", audio: "♪ audio" };
    return link(url, (names[out.kind] || "↗ output") + " · " + (out.label || ""), "out-link");
  }

  const EVENT_STATUS = { "run.failed": "failed", "run.completed": "completed", "run.stalled": "stalled", "run.started": "started" };

  function eventItem(ev) {
    const status = EVENT_STATUS[ev.type] || "other";
    const li = el("li", "event " + status);
    const head = el("div", "line");
    head.append(badge(status, "status-" + status), el("strong", "subject", subject(ev)));
    if (ev.late) head.append(badge("late", "late"));
    const meta = el("div", "meta");
    meta.append(el("code", "run-id", ev.run_id), el("span", "project", ev.project_id || ""), agoSpan(ev.created_at));
    if (typeof ev.stalled_for === "number") meta.append(el("span", "stuck", "no progress for " + duration(ev.stalled_for)));
    li.append(head, meta);
    if (ev.type === "run.failed") {
      const err = el("p", "error");
      err.append(el("code", "error-code", ev.error_code || "no error code"));
      if (ev.error_message) err.append(el("span", "error-message", ev.error_message));
      li.append(err);
    }
    const outs = (ev.outputs || []).map(output).filter(Boolean);
    if (outs.length) {
      const box = el("div", "outputs");
      box.append(...outs);
      li.append(box);
    }
    li.dataset.eventId = ev.id;
    return li;
  }

  function sinkItem(s) {
    const li = el("li", "sink");
    const head = el("div", "line");
    head.append(badge(s.health, "health-" + s.health), el("strong", "subject", s.name), el("span", "type", s.type || "not configured"));
    const counts = el("div", "meta");
    counts.append(
      el("span", "pending", "outbox " + s.pending),
      el("span", s.dead ? "dead has-dead" : "dead", "dead letters " + s.dead),
    );
    if (typeof s.last_success_ms === "number") {
      const ok = el("span", "last-ok", "last delivery ");
      ok.append(agoSpan(s.last_success_ms));
      counts.append(ok);
    }
    li.append(head, counts);
    if (s.disabled_reason) li.append(el("p", "error", "disabled: " + s.disabled_reason));
    if (s.last_error && s.health !== "ok") li.append(el("p", "error", "last error: " + s.last_error));
    return li;
  }

  function renderIngress(ing) {
    const box = $("ingress");
    box.hidden = !ing;
    if (!ing) return;
    const where = $("ingress-where");
    where.textContent = "listening on " + (ing.listen || "?") + (ing.path || "");
    if (typeof ing.last_accepted_ms === "number") {
      where.append(" · last callback ", agoSpan(ing.last_accepted_ms));
    }
    const rejected = Object.entries(ing.rejected || {});
    const refused = rejected.reduce((n, [, v]) => n + v, 0);
    const parts = [ing.accepted + " accepted", ing.duplicate + " duplicate",
      refused + " rejected" + (refused ? " (" + rejected.map(([k, v]) => k + " " + v).join(", ") + ")" : "")];
    const confirmed = Object.entries(ing.confirmed || {}).map(([k, v]) => k + " " + v);
    if (confirmed.length) parts.push("confirmed with the API: " + confirmed.join(", "));
    if (ing.confirming) parts.push(ing.confirming + " being confirmed");
    $("ingress-counts").textContent = parts.join(" · ");
  }

  function render(data) {
    const runs = data.active_runs || [];
    const total = typeof data.active_total === "number" ? data.active_total : runs.length;
    $("active-count").textContent = total > runs.length ? runs.length + " oldest of " + total : String(total);
    show($("active-list"), "active-empty", runs.map(activeRun));

    const groups = data.failures_last_hour || [];
    $("failure-count").textContent = String(groups.reduce((n, g) => n + g.count, 0));
    show($("failure-list"), "failure-empty", groups.map((g) => {
      const li = el("li", "chip");
      li.append(el("code", null, g.error_code || "no error code"), el("span", "n", "× " + g.count));
      return li;
    }));

    const seen = new Set();
    const items = (data.recent_events || []).map((ev) => {
      seen.add(ev.id);
      let node = eventNodes.get(ev.id);
      if (!node) {
        node = eventItem(ev);
        eventNodes.set(ev.id, node);
      }
      return node;
    });
    for (const id of [...eventNodes.keys()]) if (!seen.has(id)) eventNodes.delete(id);
    show($("event-list"), "event-empty", items);

    show($("sink-list"), "sink-empty", (data.sinks || []).map(sinkItem));

    renderIngress(data.ingress);
    showReady(data.ready);
    refreshAges(data.now);
  }

  // /readyz's decision: the instance's role in the header, a banner with the reason when it is not ready.
  function showReady(r) {
    const role = $("role");
    role.textContent = r && r.role ? r.role : "";
    role.hidden = !(r && r.role);
    const ready = $("ready");
    if (r && !r.ok) {
      ready.textContent = "Not ready (" + r.role + "): " + r.reason;
      ready.hidden = false;
    } else {
      ready.hidden = true;
    }
  }

  function setLive(ok, text) {
    const live = $("live");
    live.textContent = text;
    live.className = ok ? "live ok" : "live lost";
  }

  async function poll() {
    if (busy) return;
    busy = true;
    clearTimeout(timer);
    try {
      const response = await fetch("api/v1/status", { cache: "no-store", headers: { Accept: "application/json" } });
      if (!response.ok) {
        // 503 while the state store is away: the body still says why the instance is not ready
        const body = await response.json().catch(() => null);
        if (body && body.ready) showReady(body.ready);
        throw new Error("HTTP " + response.status);
      }
      const data = await response.json();
      render(data);
      failures = 0;
      last = { now: data.now, at: performance.now() };
      setLive(true, "live · " + iso(data.now).slice(11, 19) + " UTC");
    } catch (e) {
      failures += 1;
      setLive(false, "connection lost, retrying" + (failures > 1 ? " (" + failures + ")" : ""));
      if (last) refreshAges(last.now + (performance.now() - last.at));
    } finally {
      busy = false;
      timer = setTimeout(poll, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) poll();
  });
  poll();
})();
