// The job page's live progress card: polls the progress endpoint every second (with pollJson,
// eventproject/static/eventproject/poll.js), and stops once the job has finished.
(function () {
  "use strict";
  const card = document.getElementById("job-progress");
  if (!card) return;
  const FINISHED = JSON.parse(card.dataset.finished);  // the finished statuses, as the Job model says
  const gettext = window.gettext || ((text) => text);
  const fill = (format, values) => (window.interpolate ? window.interpolate(format, values, true) :
    format.replace(/%\((\w+)\)s/g, (_, name) => values[name]));
  const STATUS = {queued: gettext("queued"), running: gettext("running"), cancelling: gettext("cancelling"),
                  cancelled: gettext("cancelled"), completed: gettext("completed"), failed: gettext("failed")};
  // Buttons that change a job ask first (their question is in data-confirm, in the page's language).
  document.querySelectorAll("form.job-action[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => { if (!window.confirm(form.dataset.confirm)) event.preventDefault(); });
  });
  const renderedStatus = card.dataset.status;
  const field = (name) => card.querySelector(`[data-field="${name}"]`);

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    seconds = Math.round(seconds);
    const h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
    const values = {h, m, s};
    return h ? fill(gettext("%(h)s h %(m)s min"), values) : m ? fill(gettext("%(m)s min %(s)s s"), values) : fill(gettext("%(s)s s"), values);
  }

  // An LLM job's endpoint and model, how answers are asked for, and what was adapted to them.
  function showService(llm) {
    const row = card.querySelector("[data-llm]");
    row.hidden = !llm;
    if (!llm) return;
    field("llm").textContent = fill(gettext("%(model)s at %(endpoint)s, answers asked as %(response_format)s"), llm);
    card.querySelector("[data-adapted]").replaceChildren(...llm.adapted.map((a) => {
      const item = document.createElement("li");
      item.textContent = a.instead ? fill(gettext("refused %(refused)s: sends %(instead)s instead"), a)
                                   : fill(gettext("refused %(refused)s: sends nothing instead"), a);
      return item;
    }));
  }

  function show(p) {
    const set = (name, value) => { const el = field(name); if (el) el.textContent = value; };
    set("percent", p.percent.toFixed(1));
    ["processed", "total", "succeeded", "failed", "cancelled", "running", "pending", "current_batch",
     "total_batches", "event_count", "prompt_tokens", "completion_tokens", "reasoning_tokens"].forEach(
      (name) => set(name, p[name].toLocaleString()));
    showService(p.llm);
    set("status", STATUS[p.status] || p.status);
    field("status").className = `job-status job-status-${p.status}`;
    set("activity", p.activity || "—");
    if (FINISHED.includes(p.status)) {
      // A finished job has no current rate: its average over the run tells how fast it went.
      set("throughput_per_second", p.average_per_second.toFixed(1));
      card.querySelector("[data-throughput-label]").textContent = gettext("Average throughput");
    } else {
      set("throughput_per_second", p.throughput_per_second.toFixed(1));
    }
    set("estimated_seconds_remaining", duration(p.estimated_seconds_remaining));
    set("elapsed_seconds", duration(p.elapsed_seconds));
    set("current_user_ids", p.current_user_ids.length ? p.current_user_ids.join(", ") : "—");
    const bar = card.querySelector("[data-bar]");
    bar.style.width = `${Math.min(p.percent, 100)}%`;
    card.querySelector("[data-progressbar]").setAttribute("aria-valuenow", p.percent.toFixed(1));
    const errors = card.querySelector("[data-errors]");
    errors.hidden = p.top_errors.length === 0;
    const list = card.querySelector("[data-error-list]");
    list.replaceChildren(...p.top_errors.map((e) => {
      const item = document.createElement("li");
      item.textContent = `${e.count} × ${e.error}`;
      return item;
    }));
    if (FINISHED.includes(p.status)) {
      const outcome = card.querySelector("[data-outcome]");
      const words = {
        completed: fill(gettext("Job %(id)s completed: %(succeeded)s users succeeded, %(failed)s failed."), p),
        failed: fill(gettext("Job %(id)s failed: %(error)s"), p),
        cancelled: fill(gettext("Job %(id)s was cancelled: %(succeeded)s users succeeded, %(failed)s failed, " +
                          "%(cancelled)s not processed."), p),
      };
      outcome.textContent = words[p.status];
      outcome.className = `job-outcome job-outcome-${p.status}`;
      outcome.hidden = false;
    }
  }

  window.pollJson(card.dataset.url, (progress) => {
    show(progress);
    if (!FINISHED.includes(progress.status)) return false;
    // The page was rendered while the job ran: reload once so its buttons match the outcome.
    if (!FINISHED.includes(renderedStatus)) window.setTimeout(() => window.location.reload(), 1500);
    return true;
  });
})();
