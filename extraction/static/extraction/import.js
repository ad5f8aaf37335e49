// An import's live progress card: polls the import's API endpoint every second until it has ended.
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

  async function poll() {
    let progress = null;
    try {
      const response = await fetch(card.dataset.url, {credentials: "same-origin", cache: "no-cache",
                                                       headers: {Accept: "application/json"}});
      if (response.ok) progress = await response.json();
    } catch (error) { /* the server may be restarting: try again */ }
    if (progress) {
      show(progress);
      if (ENDED.includes(progress.status)) return;
    }
    window.setTimeout(poll, 1000);
  }
  if (!ENDED.includes(card.dataset.status)) poll();
})();
