// Datasets: the team's uploads, and a new upload with a progress bar.

import { api, upload, withQuery } from "../api.js";
import { h, clear, age, progressBar, setProgress } from "../dom.js";
import { navigate } from "../nav.js";

export async function render(main, _params, signal) {
  const file = h("input", { type: "file", id: "upload-file", name: "file", accept: ".zip,.csv,.jsonl,.json", required: true });
  const task = h("select", { id: "upload-task", name: "task" },
    h("option", { value: "text_classification" }, "text classification (CSV/JSONL)"),
    h("option", { value: "image_classification" }, "image classification (zip)"));
  const name = h("input", { type: "text", id: "upload-name", name: "name", placeholder: "name (optional)", maxlength: 200 });
  const bar = progressBar(0);
  bar.id = "upload-progress";
  const status = h("span", { class: "muted", id: "upload-status" });
  const button = h("button", { class: "primary", type: "submit" }, "Upload");
  const form = h("form", { class: "card", id: "upload-form" },
    h("h2", {}, "Upload a dataset"),
    h("p", { class: "muted" }, "A zip of class folders (cat/001.jpg, optionally under train/ val/ test/), or a CSV/JSONL file with text and label columns (optional split)."),
    h("div", { class: "row" }, file, task, name, button),
    h("div", { class: "row", style: { marginTop: "8px" } }, bar, status));
  file.addEventListener("change", () => {
    const f = file.files[0];
    if (f && /\.zip$/i.test(f.name)) task.value = "image_classification";
    else if (f) task.value = "text_classification";
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return;
    const data = new FormData();
    data.append("file", f);
    data.append("task", task.value);
    if (name.value.trim()) data.append("name", name.value.trim());
    button.disabled = true;
    status.className = "muted";
    status.textContent = "uploading…";
    try {
      const ds = await upload("/datasets", data, (p) => {
        setProgress(bar, p);
        status.textContent = p < 1 ? `${Math.round(100 * p)}% sent` : "checking the dataset…";
      });
      status.textContent = "done";
      navigate(`/ui/datasets/${ds.id}`);
    } catch (err) {
      status.className = "error";
      status.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });

  const body = h("tbody");
  main.append(h("h1", {}, "Datasets"), form,
    h("div", { class: "card" }, h("table", { id: "datasets-table" },
      h("thead", {}, h("tr", {}, ["name", "task", "labels", "examples", "warnings", "age"].map((t) => h("th", {}, t)))), body)));
  const page = await api(withQuery("/datasets", { limit: 100 }), { signal });
  clear(body);
  for (const ds of page.items) {
    body.append(h("tr", { "data-dataset": ds.id },
      h("td", {}, h("a", { href: `/ui/datasets/${ds.id}`, "data-link": true }, ds.name)),
      h("td", {}, ds.task.replace("_classification", "")),
      h("td", {}, ds.labels.length),
      h("td", {}, ds.num_examples),
      h("td", { class: ds.warnings.length ? "warn" : "muted" }, ds.warnings.length),
      h("td", { title: ds.created_at }, age(ds.created_at))));
  }
  if (!page.items.length) body.append(h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No datasets yet.")));
}
