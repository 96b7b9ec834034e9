// Jobs: status, progress, best metric and age, filtered by status; refreshed every few seconds.

import { api, withQuery } from "../api.js";
import { h, clear, age, badge, fmt, progressBar } from "../dom.js";

const STATUSES = ["", "queued", "running", "succeeded", "failed", "cancelled", "pruned"];
let chosen = "";  // the status filter, kept while the tab lives (the URL carries no query)

export async function render(main, _params, signal) {
  const select = h("select", { id: "status-filter", "aria-label": "status" },
    STATUSES.map((st) => h("option", { value: st, selected: st === chosen }, st || "all statuses")));
  const body = h("tbody");
  const note = h("p", { class: "muted" });
  main.append(
    h("div", { class: "row" }, h("h1", {}, "Jobs"), h("span", { style: { flex: 1 } }), select),
    h("div", { class: "card" },
      h("table", { id: "jobs-table" },
        h("thead", {}, h("tr", {}, ["job", "status", "progress", "base model", "best metric", "age"].map((t) => h("th", {}, t)))),
        body),
      note));

  async function load() {
    const page = await api(withQuery("/jobs", { status: chosen, limit: 100 }), { signal });
    clear(body);
    for (const job of page.items) {
      body.append(h("tr", { "data-job": job.id },
        h("td", {}, h("a", { href: `/ui/jobs/${job.id}`, "data-link": true }, job.id.slice(0, 12))),
        h("td", {}, badge(job.status)),
        h("td", {}, h("div", { class: "row" }, progressBar(job.progress),
          h("span", { class: "muted" }, `${job.step}/${job.total_steps ?? "?"}`))),
        h("td", {}, job.base_model),
        h("td", {}, job.best_metric_name ? `${job.best_metric_name} ${fmt(job.best_metric)}` : "–"),
        h("td", { title: job.created_at }, age(job.created_at))));
    }
    note.textContent = page.items.length ? (page.next_cursor ? "Showing the newest 100." : "") : "No jobs.";
  }

  select.addEventListener("change", () => { chosen = select.value; load().catch(() => {}); });
  await load();
  const timer = setInterval(() => load().catch(() => {}), 4000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
