// One dataset: class counts per split as bars, its warnings, and a few examples of each class.

import { api } from "../api.js";
import { bars, COLORS } from "../charts.js";
import { h, age, append } from "../dom.js";

const SPLITS = ["train", "val", "test"];

export async function render(main, [datasetId], signal) {
  const id = encodeURIComponent(datasetId);
  const ds = await api(`/datasets/${id}`, { signal });
  append(main, [
    h("h1", {}, ds.name),
    h("div", { class: "card" }, h("dl", { class: "kv" },
      h("dt", {}, "id"), h("dd", {}, ds.id),
      h("dt", {}, "task"), h("dd", {}, ds.task),
      h("dt", {}, "file"), h("dd", {}, `${ds.filename} (${(ds.size_bytes / 1024).toFixed(1)} KB)`),
      h("dt", {}, "examples"), h("dd", {}, `${ds.num_examples} in ${ds.labels.length} classes`),
      h("dt", {}, "splits"), h("dd", {}, ds.splits_given ? "given in the upload" : "made by the service (80/10/10, stratified)"),
      h("dt", {}, "uploaded"), h("dd", {}, `${age(ds.created_at)} ago`))),
    ds.warnings.length
      ? h("div", { class: "card", id: "warnings" }, h("h2", {}, "Warnings"), h("ul", {}, ds.warnings.map((w) => h("li", { class: "warn" }, w))))
      : null]);

  const max = Math.max(1, ...SPLITS.flatMap((sp) => Object.values(ds.counts[sp] || {})));
  main.append(h("div", { class: "grid", id: "class-counts" }, SPLITS.map((sp, i) => {
    const counts = ds.counts[sp] || {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    return h("div", { class: "card", "data-split": sp }, h("h2", {}, `${sp} · ${total}`),
      bars(ds.labels.map((label) => [label, counts[label] || 0, COLORS[i]]), { max }));
  })));

  const samples = h("div", { class: "card", id: "samples", style: { marginTop: "16px" } }, h("h2", {}, "Examples"), h("p", { class: "muted" }, "loading…"));
  main.append(samples);
  const answer = await api(`/datasets/${id}/samples?per_class=3`, { signal });
  samples.lastChild.remove();
  samples.append(h("div", { class: "samples" }, Object.entries(answer.samples).map(([label, rows]) => [
    h("strong", {}, label),
    h("div", { class: "items", "data-label": label }, rows.map((row) => row.image
      ? h("img", { src: row.image, alt: `${label} (${row.split})`, title: row.split })
      : row.image === null ? h("span", { class: "muted" }, "(unreadable)")
        : h("span", { class: "text", title: row.split }, row.text))),
  ])));
}
