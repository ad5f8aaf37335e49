// An import's live progress card: polls the import's API endpoint every second until it has ended
// (with pollJson, eventproject/static/eventproject/poll.js).
(function () {
  "use strict";
  const card = document.getElementById("import-progress");
  if (!card) return;
  const ENDED = ["completed", "failed"];
  const gettext = window.gettext || ((text) => text);
  const STATUS = {queued: gettext("queued"), running: gettext("running"), completed: gettext("completed"), failed: gettext("failed")};
  const field = (name) => card.querySelector(`[data-field="${name}"]`);

  function show(p) {
    const set = (name, value) => { const el = field(name); if (el) el.textContent = value; };
    set("percent", p.percent.toFixed(1));
    ["rows_read", "imported", "updated", "duplicates", "rejected", "line"].forEach((name) => set(name, p[name].toLocaleString()));
    set("status", STATUS[p.status] || p.status);
    field("status").className = `job-status job-status-${p.status}`;
    card.querySelector("[data-bar]").style.width = `${Math.min(p.percent, 100)}%`;
    card.querySelector("[data-progressbar]").setAttribute("aria-valuenow", p.percent.toFixed(1));
    card.querySelector("[data-report]").textContent = p.report.length ? p.report.join("\n") : gettext("None so far.");
    if (ENDED.includes(p.status)) {
      const outcome = card.querySelector("[data-outcome]");
      outcome.textContent = p.status === "failed" ? p.error : p.summary;
      outcome.className = `job-outcome job-outcome-${p.status}`;
      outcome.hidden = false;
    }
  }

  if (!ENDED.includes(card.dataset.status)) {
    window.pollJson(card.dataset.url, (progress) => { show(progress); return ENDED.includes(progress.status); });
  }
})();
