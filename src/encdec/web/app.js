// The page of `encdec serve`: it calls the same /info and /translate as every other client.
"use strict";

const EXAMPLES = {
  de: ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.",
       "Eine Frau liest ein Buch im Park.", "Ein kleines Mädchen klettert auf einen Baum."],
  en: ["A man is riding a bicycle.", "Two dogs are playing in the snow.",
       "good morning", "thank you very much"],
  fr: ["Un homme fait du vélo.", "Deux chiens jouent dans la neige."],
  cs: ["Muž jede na kole.", "Dva psi si hrají ve sněhu."],
};

const byId = (id) => document.getElementById(id);
let model = null;  // GET /info's answer
let results = [];  // POST /translate's translations, one per sentence

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = byId("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

// The answer's JSON, or an Error carrying the API's own {"error": ...} message.
async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: requestHeaders() });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) byId("api-key-row").hidden = false;
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(message) {
  byId("error").textContent = message;
  byId("error").hidden = !message;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

async function describeModel() {
  try {
    model = await call("/info");
  } catch (error) {
    showError(error.message);
    return;
  }
  showError("");
  const attention = model.attention ? ` with ${model.attention_kind} attention` : "";
  byId("model").textContent =
    `${model.source_language} → ${model.target_language} · ` +
    `${model.parameters.toLocaleString("en")} parameters · ${model.cell.toUpperCase()}` +
    `${attention} · encdec ${model.encdec_version}`;
  byId("beam-size").value = model.decoding.beam_size;
  byId("beam-size").max = model.limits.max_beam_size;
  byId("temperature").value = model.decoding.temperature;
  showSearchOrSampling();
  const examples = byId("examples");
  examples.replaceChildren();
  for (const sentence of EXAMPLES[model.source_language] || []) {
    const button = element("button", sentence, "example");
    button.type = "button";
    button.addEventListener("click", () => {
      byId("source").value = sentence;
      translate();
    });
    examples.append(button);
  }
}

function sampling() {
  return Number(byId("temperature").value) > 0;
}

// Sampling draws one translation, a token at a time: the beam size and the n-best list count
// only at temperature 0.
function showSearchOrSampling() {
  byId("beam-size").disabled = sampling();
  byId("n-best").disabled = sampling();
}

async function translate() {
  const sentences = byId("source").value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (sentences.length === 0) return;
  const request = {
    text: sentences,
    n_best: sampling() ? 1 : Number(byId("n-best").value) || 1,
    attention: Boolean(model && model.attention),
  };
  if (sampling()) {
    request.temperature = Number(byId("temperature").value);  // a fresh draw each time
  } else {
    request.beam_size = Number(byId("beam-size").value) || undefined;
  }
  byId("translate").disabled = true;
  try {
    const answer = await call("/translate", { method: "POST", body: JSON.stringify(request) });
    showError("");
    results = answer.translations;
    showTranslations();
    byId("timing").textContent = `${answer.elapsed_ms} ms`;
  } catch (error) {
    clearTranslations();  // results of earlier settings must not pass for this request's
    showError(error.message);
  } finally {
    byId("translate").disabled = false;
  }
}

function clearTranslations() {
  results = [];
  byId("translations").replaceChildren();
  byId("timing").textContent = "";
  byId("details").hidden = true;
}

function showTranslations() {
  const list = byId("translations");
  list.replaceChildren();
  results.forEach((result, index) => {
    const item = element("li", result.text);
    item.tabIndex = 0;
    item.addEventListener("click", () => select(index));
    item.addEventListener("keydown", (event) => event.key === "Enter" && select(index));
    list.append(item);
  });
  select(0);
}

function select(index) {
  [...byId("translations").children].forEach((item, i) => {
    item.classList.toggle("selected", i === index);
    item.setAttribute("aria-selected", String(i === index));
  });
  const result = results[index];
  byId("details").hidden = false;
  byId("selected-number").textContent = String(index + 1);
  const rows = byId("n-best-list").tBodies[0];
  rows.replaceChildren();
  result.n_best.forEach((hypothesis, rank) => {
    const row = element("tr");
    row.append(element("td", String(rank + 1)), element("td", hypothesis.text),
               element("td", hypothesis.score.toFixed(3), "number"));
    rows.append(row);
  });
  drawHeatmap(result);
}

// Rows: the translation's tokens; columns: the source as the model read it.
function drawHeatmap(result) {
  byId("attention").hidden = !result.attention;
  const table = byId("heatmap");
  table.replaceChildren();
  if (!result.attention) return;
  const head = element("tr");
  head.append(element("th"));
  for (const token of result.source_tokens) head.append(element("th", token, "source"));
  table.append(head);
  result.attention.forEach((weights, row) => {
    const line = element("tr");
    line.append(element("th", result.tokens[row], "target"));
    weights.forEach((weight, column) => {
      const cell = element("td", "", "weight");
      cell.style.backgroundColor = `rgba(29, 78, 216, ${weight})`;
      cell.dataset.weight = String(weight);
      cell.title = `${result.tokens[row]} ← ${result.source_tokens[column]}: ${weight.toFixed(2)}`;
      line.append(cell);
    });
    table.append(line);
  });
}

byId("translate").addEventListener("click", translate);
byId("temperature").addEventListener("input", showSearchOrSampling);
byId("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    translate();
  }
});
byId("api-key").addEventListener("change", describeModel);
describeModel();
