// Models and aliases: test metrics side by side, and moving an alias with a confirmation that names the model it
// replaces (a model below its baseline needs `force`, which the dialog offers after the server says so).

import { api, allPages, ApiError } from "../api.js";
import { h, clear, age, fmt, pct, confirmDialog } from "../dom.js";

export async function render(main, _params, signal) {
  let aliasToMove = "production";
  const aliasesEl = h("div", { class: "card", id: "aliases" });
  const table = h("div", { class: "card", id: "models" });
  const message = h("div", { id: "alias-message" });
  main.append(h("h1", {}, "Models"), message, aliasesEl, table);

  async function load() {
    const [models, aliases] = await Promise.all([
      allPages("/models", { limit: 200 }, { signal, max: 10 }),
      api("/aliases", { signal }),
    ]);
    draw(models, aliases);
  }

  function draw(models, aliases) {
    const byId = new Map(models.map((m) => [m.id, m]));
    const aliasesOf = (id) => aliases.filter((a) => a.model_id === id).map((a) => a.name);
    clear(aliasesEl).append(h("h2", {}, "Aliases"), aliases.length
      ? h("table", {}, h("tbody", {}, aliases.map((a) => h("tr", { "data-alias": a.name, "data-model": a.model_id },
        h("th", {}, a.name), h("td", {}, describe(byId.get(a.model_id), a.model_id)), h("td", { class: "muted" }, `moved ${age(a.updated_at)} ago`)))))
      : h("p", { class: "muted" }, "No aliases yet. POST /predict without a model uses 'production'."));

    const aliasName = h("input", { id: "alias-name", value: aliasToMove, oninput: (e) => { aliasToMove = e.target.value; }, pattern: "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "aria-label": "alias name", size: 14 });
    clear(table).append(
      h("div", { class: "row" }, h("h2", {}, "Models"), h("span", { style: { flex: 1 } }), h("label", {}, "alias to move: ", aliasName)),
      h("table", {},
        h("thead", {}, h("tr", {}, ["model", "base model", "task", "test accuracy", "test macro F1", "linear probe", "majority class", "aliases", "age", ""]
          .map((t, i) => h("th", { class: i >= 3 && i <= 6 ? "num" : "" }, t)))),
        h("tbody", {}, models.map((m) => h("tr", { "data-model": m.id },
          h("td", {}, h("div", {}, m.name), h("div", { class: "muted" }, m.id), m.job_id ? h("a", { href: `/ui/jobs/${m.job_id}`, "data-link": true }, "job") : null),
          h("td", {}, m.base_model),
          h("td", {}, m.task.replace("_classification", "")),
          h("td", { class: "num" }, pct(m.metrics.test_accuracy), m.below_baseline ? h("div", { class: "warn" }, "below baseline") : null),
          h("td", { class: "num" }, fmt(m.metrics.test_macro_f1, 3)),
          h("td", { class: "num" }, pct(m.metrics.linear_probe_accuracy)),
          h("td", { class: "num" }, pct(m.metrics.majority_class_accuracy)),
          h("td", {}, aliasesOf(m.id).join(", ")),
          h("td", {}, age(m.created_at)),
          h("td", {}, h("button", { type: "button", class: "set-alias", "data-model": m.id,
            onclick: () => moveAlias(aliasName.value.trim(), m, aliases, byId) }, "Set alias")))))));
    if (!models.length) table.append(h("p", { class: "muted" }, "No models yet: a job that succeeds registers one."));
  }

  async function moveAlias(name, model, aliases, byId) {
    clear(message);
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(name)) { say("error", "An alias name is letters, digits, '_', '.' or '-' (at most 64)."); return; }
    const current = aliases.find((a) => a.name === name);
    if (current?.model_id === model.id) { say("muted", `'${name}' already points at ${model.id}.`); return; }
    const replaced = current ? `It now points at ${describe(byId.get(current.model_id), current.model_id)}, which it will no longer serve.` : "It does not exist yet.";
    if (!(await confirmDialog(`Point alias '${name}' at ${describe(model, model.id)}? ${replaced}`, `Move '${name}'`))) return;
    try {
      await api(`/aliases/${encodeURIComponent(name)}`, { method: "PUT", json: { model_id: model.id } });
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409 && /force/.test(err.message))) { say("error", err.message); return; }
      if (!(await confirmDialog(`${err.message}\n\nForce '${name}' onto ${model.id} anyway?`, "Force"))) { say("warn", err.message); return; }
      try { await api(`/aliases/${encodeURIComponent(name)}`, { method: "PUT", json: { model_id: model.id, force: true } }); }
      catch (err2) { say("error", err2.message); return; }
    }
    say("muted", `'${name}' now points at ${model.id}.`);
    await load();
  }

  function say(cls, text) { clear(message).append(h("p", { class: `notice ${cls}` }, text)); }

  await load();
}

function describe(model, id) {
  if (!model) return `model ${id}`;
  const acc = model.metrics?.test_accuracy;
  return `${model.name} (${model.id}${acc !== undefined && acc !== null ? `, test accuracy ${pct(acc)}` : ""})`;
}
