// The predict playground: texts (one per line) or dropped images, top-k bars per input (POST /predict).

import { api, allPages } from "../api.js";
import { bars } from "../charts.js";
import { h, clear, pct } from "../dom.js";

export async function render(main, _params, signal) {
  const [models, aliases] = await Promise.all([allPages("/models", { limit: 200 }, { signal, max: 5 }), api("/aliases", { signal })]);
  const model = h("select", { id: "predict-model", "aria-label": "model" },
    aliases.map((a) => h("option", { value: a.name }, `alias ${a.name} → ${a.model_id}`)),
    models.map((m) => h("option", { value: m.id }, `${m.name} (${m.id.slice(0, 12)}, ${m.task.replace("_classification", "")})`)));
  const topK = h("input", { id: "predict-topk", type: "number", min: 1, max: 20, value: 3, size: 3, "aria-label": "top k" });
  const texts = h("textarea", { id: "predict-texts", placeholder: "One text per line" });
  const fileInput = h("input", { type: "file", accept: "image/*", multiple: true, id: "predict-files" });
  const drop = h("div", { class: "drop", id: "predict-drop" }, "Drop images here, or ", fileInput);
  const results = h("div", { id: "predictions" });
  const run = h("button", { class: "primary", type: "button", id: "predict-run" }, "Predict");
  let images = [];

  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); take([...e.dataTransfer.files]); });
  fileInput.addEventListener("change", () => take([...fileInput.files]));

  function take(files) {
    images = files.filter((f) => f.type.startsWith("image/")).slice(0, 16);
    drop.firstChild.textContent = images.length ? `${images.length} image(s): ${images.map((f) => f.name).join(", ")}. ` : "Drop images here, or ";
    if (images.length) predict();
  }

  async function predict() {
    clear(results);
    const body = { model: model.value || undefined, top_k: Math.max(1, Number(topK.value) || 1) };
    let inputs;
    if (images.length) {
      body.images = await Promise.all(images.map(dataUrl));
      inputs = images.map((f, i) => h("img", { src: body.images[i], alt: f.name, class: "thumb" }));
    } else {
      body.texts = texts.value.split("\n").map((t) => t.trim()).filter(Boolean);
      if (!body.texts.length) { results.append(h("p", { class: "muted" }, "Type a text or drop an image.")); return; }
      inputs = body.texts;
    }
    run.disabled = true;
    try {
      const answer = await api("/predict", { method: "POST", json: body, signal });
      results.append(h("p", { class: "muted", id: "predict-model-used" }, `model ${answer.model_id}`));
      answer.predictions.forEach((top, i) => results.append(h("div", { class: "card prediction", "data-top": top[0]?.label },
        h("div", { class: "input" }, inputs[i]),
        bars(top.map((p) => [p.label, p.score]), { max: 1, format: pct }))));
    } catch (err) {
      results.append(h("p", { class: "error" }, err.message));
    } finally {
      run.disabled = false;
    }
  }

  run.addEventListener("click", () => { images = []; drop.firstChild.textContent = "Drop images here, or "; predict(); });
  main.append(h("h1", {}, "Predict"),
    h("div", { class: "card" },
      h("div", { class: "row" }, h("label", {}, "model ", model), h("label", {}, "top k ", topK)),
      h("div", { style: { marginTop: "8px" } }, texts),
      h("div", { class: "row", style: { marginTop: "8px" } }, run),
      h("div", { style: { marginTop: "12px" } }, drop)),
    results);
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}
