// Posts the contact form with fetch() and tells the customer what
// happened, in words: the receipt on success, what to fix or when to try
// again otherwise. The gateway's error bodies are JSON:
//   {"error": "<code>", "message": "<sentence>", "fields": [{"name", "problem"}]}
"use strict";

(function () {
  const form = document.getElementById("contact");
  const status = document.getElementById("status");
  const button = form.querySelector("button[type=submit]");

  function say(kind, text) {
    status.dataset.kind = kind;
    status.textContent = text;
  }

  function clearProblems() {
    form.querySelectorAll(".problem").forEach((el) => el.remove());
  }

  function markProblem(name, problem) {
    const input = form.elements.namedItem(name);
    const note = document.createElement("span");
    note.className = "problem";
    note.dataset.field = name;
    note.textContent = " " + problem;
    (input && input.closest ? input.closest("label") || form : form).append(note);
  }

  // Anti-bot token: the gateway hands out a signed timestamp for forms
  // with token = "optional" or "required" (404 when the form has none).
  async function fetchToken() {
    const field = form.elements.namedItem("_token");
    try {
      const response = await fetch(form.action + "/token", {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (response.ok) {
        const body = await response.json();
        field.value = body.token;
      }
    } catch (e) {
      // No token: the post still goes; with token = "required" it is
      // kept aside for review instead of reaching the desk.
    }
    form.dataset.tokenReady = "true";
  }

  function retryText(response) {
    const seconds = parseInt(response.headers.get("Retry-After") || "", 10);
    if (!Number.isFinite(seconds)) return "in a moment";
    if (seconds < 90) return "in " + seconds + " seconds";
    return "in about " + Math.ceil(seconds / 60) + " minutes";
  }

  async function explain(response) {
    let body = {};
    try {
      body = await response.json();
    } catch (e) {
      // Not JSON (a proxy's page, say): fall back to the status alone.
    }
    switch (response.status) {
      case 400:
        (body.fields || []).forEach((f) => markProblem(f.name, f.problem));
        return "Please check the marked fields. " + (body.message || "");
      case 413:
        return "That is too much to send at once (attachments too large or too many). " +
          (body.message || "");
      case 422:
        return "An attachment was refused by the virus scanner; your message was not delivered.";
      case 429:
        return "We have received many messages from you just now. Please try again " +
          retryText(response) + ".";
      case 503:
        return "We cannot take messages right now. Please try again " + retryText(response) + ".";
      default:
        return body.message || "Sending failed (HTTP " + response.status + ").";
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearProblems();
    button.disabled = true;
    say("busy", "Sending…");
    const data = new FormData(form);
    data.delete("_next"); // the script shows the receipt itself
    if (!data.get("_token")) data.delete("_token");
    try {
      // FormData and Accept are CORS-safelisted: no preflight is needed;
      // the gateway answers preflights too (OPTIONS) for other requests.
      const response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: { Accept: "application/json" },
      });
      if (response.status === 202) {
        const body = await response.json();
        form.reset();
        say("ok", "Thank you! Your receipt number is " + body.id + ".");
        status.dataset.receipt = body.id;
        fetchToken(); // a token is good for one post
      } else {
        say("error", await explain(response));
      }
    } catch (e) {
      say("error", "Sending failed: the help desk cannot be reached. Please try again later.");
    } finally {
      button.disabled = false;
    }
  });

  fetchToken();
})();
