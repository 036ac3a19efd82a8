// The page's behaviour: list the served models (GET /v1/models), then send each section's text to its
// endpoint and show the answer. Plain DOM and fetch, no library, so the page needs no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const ENDPOINTS = ["segment", "tag", "classify", "generate"];

function headers() {
  const h = { "Content-Type": "application/json" };
  const token = $("token").value.trim();
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, { method, headers: headers(), body: body && JSON.stringify(body) });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error; } catch (e) { /* not JSON: keep the status text */ }
    throw new Error(`${response.status}: ${message}`);
  }
  return response;
}

function show(endpoint, text, isError) {
  const out = $(endpoint + "-output");
  out.textContent = text;
  out.classList.toggle("error", Boolean(isError));
}

async function loadModels() {
  $("status").textContent = "loading…";
  try {
    const { models } = await (await call("GET", "/v1/models")).json();
    for (const endpoint of ENDPOINTS) {
      const select = $(endpoint + "-model");
      select.replaceChildren();
      const able = models.filter((m) => m.endpoint === "/v1/" + endpoint);
      for (const m of able) {
        const option = document.createElement("option");
        option.value = m.name === null ? "" : m.name;
        option.textContent = m.name === null ? "base model" : m.name;
        select.append(option);
      }
      const section = document.querySelector(`section[data-endpoint="${endpoint}"]`);
      section.classList.toggle("unavailable", able.length === 0);
      $(endpoint + "-run").disabled = able.length === 0;
      if (able.length === 0) show(endpoint, "not served by this server's model");
    }
    $("status").textContent = `${models.length} model(s)`;
  } catch (e) {
    $("status").textContent = "could not list the models (" + e.message + ")";
  }
}

function withModel(endpoint, body) {
  const name = $(endpoint + "-model").value;
  if (name) body.adapter = name;
  return body;
}

function texts(endpoint) {
  return $(endpoint + "-input").value.split("\n").filter((line) => line.length > 0);
}

const RENDER = {
  segment: (data) => data.words.map((words) => words.join(" / ")).join("\n"),
  tag: (data) => data.entities.map((found) => found.length
    ? found.map((e) => `${e.text} [${e.type} ${e.start}-${e.end}]`).join("  ")
    : "(no entities)").join("\n"),
  classify: (data) => data.results.map((r) =>
    `${r.label} (${Object.entries(r.probs).map(([label, p]) => `${label}: ${p.toFixed(3)}`).join(", ")})`).join("\n"),
};

async function predict(endpoint) {
  show(endpoint, "…");
  try {
    const response = await call("POST", "/v1/" + endpoint, withModel(endpoint, { texts: texts(endpoint) }));
    show(endpoint, RENDER[endpoint](await response.json()));
  } catch (e) {
    show(endpoint, "error " + e.message, true);
  }
}

async function generate() {
  const prompt = $("generate-input").value;
  const body = withModel("generate", {
    prompt, stream: true,
    max_new_chars: Number($("generate-chars").value),
    temperature: Number($("generate-temperature").value),
  });
  if ($("generate-seed").value !== "") body.seed = Number($("generate-seed").value);
  show("generate", prompt);
  delete $("generate-output").dataset.done;
  try {
    const response = await call("POST", "/v1/generate", body);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", text = prompt;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {  // one server-sent event per blank-line-ended block
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").find((line) => line.startsWith("data: "));
        if (event.startsWith("event: end") || !data) continue;
        if (event.startsWith("event: error")) throw new Error(JSON.parse(data.slice(6)).error);
        text += JSON.parse(data.slice(6)).text;
        show("generate", text);
      }
    }
    $("generate-output").dataset.done = "true";
  } catch (e) {
    show("generate", "error " + e.message, true);
  }
}

for (const endpoint of ["segment", "tag", "classify"]) {
  $(endpoint + "-run").addEventListener("click", () => predict(endpoint));
}
$("generate-run").addEventListener("click", generate);
$("connect").addEventListener("click", loadModels);
loadModels();
