// One job: live curves and evaluations from GET /jobs/{id}/stream, the events, checkpoints, hyperparameters as
// used, a cancel button, and on success the report (confusion matrix, per-class table, baselines, calibration and
// the mistakes).

import { api, ApiError, authHeaders } from "../api.js";
import { follow } from "../sse.js";
import { LineChart, heatmap, bars, reliability } from "../charts.js";
import { h, clear, age, badge, fmt, pct, progressBar, setProgress, confirmDialog } from "../dom.js";

const EVAL_NAMES = ["val_loss", "val_accuracy", "val_macro_f1"];
const FINISHED = new Set(["succeeded", "failed", "cancelled", "pruned"]);

export async function render(main, [jobId], signal) {
  let job = await api(`/jobs/${encodeURIComponent(jobId)}`, { signal });

  const charts = {
    loss: new LineChart("Loss", ["train_loss", "val_loss"]),
    lr: new LineChart("Learning rate", ["learning_rate"]),
    speed: new LineChart("Throughput (samples/s)", ["samples_per_s"]),
    val: new LineChart("Validation metrics", ["val_accuracy", "val_macro_f1"]),
  };
  charts.loss.el.id = "chart-loss";
  charts.lr.el.id = "chart-lr";
  charts.speed.el.id = "chart-throughput";
  charts.val.el.id = "chart-validation";
  const route = {
    train_loss: [charts.loss], val_loss: [charts.loss], learning_rate: [charts.lr],
    samples_per_s: [charts.speed], val_accuracy: [charts.val], val_macro_f1: [charts.val],
  };

  const head = h("div", { class: "card", id: "job-head" });
  const streamState = h("span", { class: "muted", id: "stream-state" }, "connecting…");
  const evals = new Map();  // step -> {epoch, val_loss, ...}
  const evalBody = h("tbody");
  const timeline = h("ol", { class: "timeline", id: "events" });
  const checkpoints = h("div", { id: "checkpoints" });
  const report = h("div", { id: "report" });

  main.append(
    head,
    h("div", { class: "grid charts" }, charts.loss.el, charts.val.el, charts.lr.el, charts.speed.el),
    report,
    h("div", { class: "grid", style: { marginTop: "16px" } },
      h("div", { class: "card" }, h("h2", {}, "Evaluations"),
        h("div", { class: "scroll" }, h("table", { id: "evaluations" },
          h("thead", {}, h("tr", {}, h("th", { class: "num" }, "step"), h("th", { class: "num" }, "epoch"),
            EVAL_NAMES.map((n) => h("th", { class: "num" }, n)))), evalBody))),
      h("div", { class: "card" }, h("h2", {}, "Events ", streamState), timeline)),
    h("div", { class: "card", style: { marginTop: "16px" } }, h("h2", {}, "Checkpoints"), checkpoints),
    hyperparameters(job));

  drawHead();

  function drawHead() {
    clear(head);
    const bar = progressBar(job.progress);
    const cancel = h("button", { class: "danger", id: "cancel-job", type: "button" }, "Cancel job");
    cancel.disabled = job.cancel_requested;
    cancel.hidden = FINISHED.has(job.status);
    cancel.addEventListener("click", async () => {
      if (!(await confirmDialog(`Cancel job ${job.id}? It stops at the next step and cannot be resumed.`, "Cancel job"))) return;
      try { job = await api(`/jobs/${job.id}/cancel`, { method: "POST" }); drawHead(); }
      catch (err) { alertIn(head, err); }
    });
    head.append(
      h("div", { class: "row" },
        h("h1", {}, `Job ${job.id}`), badge(job.status),
        job.cancel_requested && !FINISHED.has(job.status) ? h("span", { class: "warn" }, "cancel requested") : null,
        job.below_baseline ? h("span", { class: "warn" }, "below baseline") : null,
        h("span", { style: { flex: 1 } }), cancel),
      h("div", { class: "row" }, bar,
        h("span", { id: "job-step" }, `step ${job.step} / ${job.total_steps ?? "?"} · epoch ${job.epoch}`),
        h("span", { class: "muted" }, job.best_metric_name ? `best ${job.best_metric_name} ${fmt(job.best_metric)}` : "")),
      h("dl", { class: "kv", style: { marginTop: "8px" } },
        h("dt", {}, "base model"), h("dd", {}, job.base_model),
        h("dt", {}, "dataset"), h("dd", {}, job.dataset_id ? h("a", { href: `/ui/datasets/${job.dataset_id}`, "data-link": true }, job.dataset_id) : "deleted"),
        h("dt", {}, "task"), h("dd", {}, job.task),
        h("dt", {}, "created"), h("dd", {}, `${age(job.created_at)} ago`),
        job.model_id ? [h("dt", {}, "model"), h("dd", {}, h("a", { href: "/ui/models", "data-link": true }, job.model_id))] : null,
        job.error ? [h("dt", {}, "error"), h("dd", { class: "error" }, job.error)] : null));
    setProgress(bar, job.progress);
  }

  let evalTimer = null;
  function addEval(row) {
    const e = evals.get(row.step) || { epoch: row.epoch };
    e[row.name] = row.value;
    evals.set(row.step, e);
    if (evalTimer) return;  // a backlog of many rows: one redraw
    evalTimer = setTimeout(() => {
      evalTimer = null;
      clear(evalBody);
      for (const [step, v] of [...evals.entries()].sort((a, b) => b[0] - a[0])) {  // newest first
        evalBody.append(h("tr", { "data-step": step }, h("td", { class: "num" }, step), h("td", { class: "num" }, fmt(v.epoch, 2)),
          EVAL_NAMES.map((n) => h("td", { class: "num" }, fmt(v[n])))));
      }
    }, 200);
  }

  function addEvent(ev) {
    timeline.prepend(h("li", { "data-kind": ev.kind },
      h("span", { class: "kind" }, ev.kind), ev.message, " ", h("span", { class: "muted" }, `· ${age(ev.at)} ago`)));
    if (ev.kind.includes("checkpoint")) loadCheckpoints();
  }

  let checkpointTimer = null;
  function loadCheckpoints() {
    clearTimeout(checkpointTimer);  // several checkpoint events in a burst: one request
    checkpointTimer = setTimeout(async () => {
      try { drawCheckpoints(checkpoints, await api(`/jobs/${job.id}/checkpoints`, { signal })); } catch { /* next event retries */ }
    }, 300);
  }

  async function finished() {
    loadCheckpoints();
    if (job.status === "succeeded") {
      try { drawReport(report, await api(`/jobs/${job.id}/report`, { signal })); }
      catch (err) { alertIn(report, err); }
    }
  }

  loadCheckpoints();
  let ended = false;
  follow(`/jobs/${encodeURIComponent(job.id)}/stream`, ({ event, data }) => {
    if (event === "metric") {
      for (const chart of route[data.name] || []) chart.add(data.name, data.step, data.value);
      if (EVAL_NAMES.includes(data.name)) addEval(data);
    } else if (event === "event") {
      addEvent(data);
    } else if (event === "status" || event === "end") {
      job = data;
      drawHead();
      if (event === "end" && !ended) { ended = true; finished(); }
    }
  }, {
    signal,
    onState: (state, err) => {
      streamState.textContent = state === "live" ? "· live" : state === "ended" ? "· finished" : state === "error" ? `· ${err.message}` : "· reconnecting…";
      streamState.dataset.state = state;
    },
  }).catch(() => {});
}

function alertIn(el, err) {
  el.append(h("p", { class: "error" }, err instanceof ApiError ? err.message : String(err)));
}

function drawCheckpoints(el, rows) {
  clear(el);
  if (!rows.length) { el.append(h("p", { class: "muted" }, "None yet.")); return; }
  el.append(h("table", {},
    h("thead", {}, h("tr", {}, ["step", "epoch", "kind", "metric", "best", "written"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((c) => h("tr", { "data-step": c.step },
      h("td", {}, c.step), h("td", {}, c.epoch), h("td", {}, c.kind),
      h("td", {}, c.metric_name ? `${c.metric_name} ${fmt(c.metric_value)}` : "–"),
      h("td", {}, c.is_best ? "★" : ""), h("td", {}, `${age(c.created_at)} ago`))))));
}

function hyperparameters(job) {
  const hp = job.hyperparameters || {};
  const auto = hp.auto || {};
  const show = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
  const rows = Object.entries(hp).filter(([k]) => k !== "auto" && k !== "expected_memory");
  const memory = hp.expected_memory || {};
  return h("div", { class: "card", id: "hyperparameters", style: { marginTop: "16px" } },
    h("h2", {}, "Hyperparameters as used"),
    h("dl", { class: "kv columns" }, rows.map(([k, v]) => h("div", { "data-name": k },
      h("dt", {}, k), h("dd", {}, show(v), auto[k] ? h("span", { class: "auto" }, " (auto)") : null)))),
    Object.keys(auto).length
      ? h("ul", { class: "muted", id: "auto-reasons" }, Object.entries(auto).map(([k, why]) => h("li", {}, h("strong", {}, k), ` "auto": ${why}`)))
      : null,
    Object.keys(memory).length ? h("p", { class: "muted" }, `expected memory in a worker (MB): ${show(memory)}`) : null);
}

function drawReport(el, r) {
  clear(el);
  const cm = r.confusion_matrix || { labels: [], matrix: [] };
  const perClass = Object.entries(r.per_class || {});
  const base = r.baselines || {};
  const margins = r.compared_to_baselines || {};
  const accRows = [["fine-tuned", r.accuracy, "#2f6fed"]];
  if (base.linear_probe) accRows.push([`linear probe (${base.linear_probe.features || "features"})`, base.linear_probe.accuracy, "#9b4dca"]);
  if (base.majority_class) accRows.push([`majority class '${base.majority_class.label}'`, base.majority_class.accuracy, "#98a2b3"]);
  el.append(
    h("div", { class: "card", style: { marginTop: "16px" } },
      h("h2", {}, `Report on the ${r.split || "test"} split (${r.num_examples} examples)`),
      h("dl", { class: "kv" },
        h("dt", {}, "accuracy"), h("dd", { id: "report-accuracy" }, pct(r.accuracy)),
        h("dt", {}, "macro F1"), h("dd", {}, fmt(r.macro_avg?.f1)),
        h("dt", {}, "weighted F1"), h("dd", {}, fmt(r.weighted_avg?.f1)),
        h("dt", {}, "loss"), h("dd", {}, fmt(r.loss)),
        h("dt", {}, "strategy"), h("dd", {}, r.strategy || "–"),
        h("dt", {}, "best step"), h("dd", {}, `${r.best_step ?? "–"} of ${r.steps_trained ?? "–"} trained`),
        r.below_baseline ? [h("dt", {}, "warning"), h("dd", { class: "warn" }, "no evaluation beat the majority class")] : null)),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Confusion matrix"),
        h("p", { class: "muted" }, "rows: true label, columns: predicted label"), heatmap(cm.labels, cm.matrix)),
      h("div", { class: "card" }, h("h2", {}, "Per class"),
        h("table", { id: "per-class" },
          h("thead", {}, h("tr", {}, h("th", {}, "label"), ["precision", "recall", "F1", "support"].map((t) => h("th", { class: "num" }, t)))),
          h("tbody", {},
            perClass.map(([label, m]) => h("tr", { "data-label": label }, h("td", {}, label),
              h("td", { class: "num" }, fmt(m.precision, 3)), h("td", { class: "num" }, fmt(m.recall, 3)),
              h("td", { class: "num" }, fmt(m.f1, 3)), h("td", { class: "num" }, m.support))),
            [["macro avg", r.macro_avg], ["weighted avg", r.weighted_avg]].filter(([, m]) => m).map(([label, m]) =>
              h("tr", { class: "muted" }, h("td", {}, label), h("td", { class: "num" }, fmt(m.precision, 3)),
                h("td", { class: "num" }, fmt(m.recall, 3)), h("td", { class: "num" }, fmt(m.f1, 3)), h("td", { class: "num" }, m.support)))))),
      h("div", { class: "card", id: "baselines" }, h("h2", {}, "Against the baselines (test accuracy)"),
        bars(accRows, { max: 1, format: pct }),
        h("dl", { class: "kv", style: { marginTop: "8px" } }, Object.entries(margins).map(([k, v]) =>
          [h("dt", {}, k.replaceAll("_", " ")), h("dd", { class: v < 0 ? "warn" : "" }, `${v >= 0 ? "+" : ""}${fmt(v, 4)}`)])))),
    drawMistakes(r));
}

const SHOWN_MISTAKES = 8;

// Calibration (the reliability diagram), the most-confused pairs and the most confident mistakes.
function drawMistakes(r) {
  const c = r.calibration;
  if (!c) return null;  // a report from before these existed
  const pairs = (r.confused_pairs || []).slice(0, 10);
  const mistakes = (r.misclassified || []).slice(0, SHOWN_MISTAKES);
  return h("div", { class: "grid" },
    h("div", { class: "card", id: "calibration" }, h("h2", {}, "Calibration"),
      h("dl", { class: "kv" },
        h("dt", {}, "expected calibration error"), h("dd", { id: "report-ece" }, fmt(c.ece, 4)),
        c.temperature ? [h("dt", {}, `after temperature ${fmt(c.temperature, 3)}`), h("dd", {}, fmt(c.ece_calibrated, 4))] : null),
      reliability(c.bins || [], c.bins_calibrated),
      h("p", { class: "muted" }, "bars: accuracy per confidence bin; dashed: perfect calibration; dots: after temperature scaling")),
    h("div", { class: "card", id: "confused-pairs" }, h("h2", {}, "Most confused"),
      pairs.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "true"), h("th", {}, "predicted"), h("th", { class: "num" }, "count"))),
          h("tbody", {}, pairs.map((p) => h("tr", { "data-count": p.count }, h("td", {}, p.true_label), h("td", {}, p.predicted_label),
            h("td", { class: "num" }, p.count)))))
        : h("p", { class: "muted" }, "no mistakes")),
    h("div", { class: "card", id: "misclassified" }, h("h2", {}, "Most confident mistakes"),
      mistakes.length
        ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "example"), h("th", {}, "true"), h("th", {}, "predicted"), h("th", { class: "num" }, "score"))),
          h("tbody", {}, mistakes.map((m) => h("tr", { "data-index": m.index },
            h("td", {}, m.image_url ? fetchedImage(m.image_url, `example ${m.index}`) : h("span", { class: "snippet" }, m.text || "")),
            h("td", {}, m.true_label), h("td", {}, m.predicted_label), h("td", { class: "num" }, fmt(m.score, 3))))))
        : h("p", { class: "muted" }, "no mistakes")));
}

// An image the API serves only with the key: fetched with it, shown from a blob URL (never the key in a URL).
function fetchedImage(url, alt) {
  const img = h("img", { alt, class: "example-image", width: 64, height: 64 });
  fetch(url, { headers: authHeaders(), cache: "no-store" })
    .then((response) => (response.ok ? response.blob() : null))
    .then((blob) => { if (blob) img.src = URL.createObjectURL(blob); })
    .catch(() => {});
  return img;
}
