// Upload page: each file goes on its own through the JSON API, with its own progress bar and
// verdict; the fee counter updates from each answer. Without JavaScript the form posts as is.
(function () {
  "use strict";
  var script = document.currentScript;
  var api = script.dataset.api;
  var quota = parseInt(script.dataset.quota, 10);
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var form = document.getElementById("upload-form");
  var inputs = [document.getElementById("photo-input"), document.getElementById("camera-input")];
  var dropzone = document.getElementById("dropzone");
  var queueList = document.getElementById("queue");
  var submit = document.getElementById("upload-submit");
  var PARALLEL = 3;
  var MAX_TRIES = 4;
  var waiting = [];
  var running = 0;
  var LABELS = { accepted: "Accepted", already_uploaded: "Already uploaded", rejected: "Refused" };

  submit.hidden = true;  // files start uploading as soon as they are chosen
  form.addEventListener("submit", function (e) { e.preventDefault(); });

  inputs.forEach(function (input) {
    input.addEventListener("change", function () {
      addFiles(input.files);
      input.value = "";
    });
  });

  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (e) { e.preventDefault(); dropzone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropzone.addEventListener(type, function (e) { e.preventDefault(); dropzone.classList.remove("over"); });
  });
  dropzone.addEventListener("drop", function (e) { addFiles(e.dataTransfer.files); });

  function addFiles(files) {
    Array.prototype.forEach.call(files, function (file) {
      var li = document.createElement("li");
      li.className = "item verdict-pending";
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = file.name;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + file.name);
      var verdict = document.createElement("span");
      verdict.className = "verdict";
      verdict.textContent = "Waiting…";
      li.append(name, bar, verdict);
      queueList.prepend(li);
      waiting.push({ file: file, li: li, bar: bar, verdict: verdict, tries: 0 });
    });
    pump();
  }

  function pump() {
    while (running < PARALLEL && waiting.length) {
      running += 1;
      send(waiting.shift());
    }
  }

  function finish(job, status, text) {
    job.li.className = "item verdict-" + status;
    job.bar.value = 100;
    job.verdict.textContent = "";
    var strong = document.createElement("strong");
    strong.textContent = LABELS[status] || "Error";
    job.verdict.append(strong);
    if (text) job.verdict.append(" — " + text);
    running -= 1;
    pump();
  }

  function retry(job, why) {
    if (job.tries >= MAX_TRIES) { finish(job, "error", why + " Please try this photo again later."); return; }
    var delay = 1000 * Math.pow(2, job.tries);
    job.verdict.textContent = why + " Retrying in " + Math.round(delay / 1000) + " s…";
    setTimeout(function () { send(job); }, delay);
  }

  function send(job) {
    job.tries += 1;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", api);
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) {
        job.bar.value = Math.round((e.loaded / e.total) * 95);
        job.verdict.textContent = "Uploading " + job.bar.value + "%";
      }
    };
    xhr.upload.onload = function () { job.verdict.textContent = "Checking…"; };
    xhr.onerror = function () { retry(job, "Network problem."); };
    xhr.ontimeout = xhr.onerror;
    xhr.onload = function () {
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      if (xhr.status === 503 || xhr.status === 502 || xhr.status === 504) { retry(job, "The server is busy."); return; }
      if (!body) { finish(job, "error", "Unexpected answer from the server (HTTP " + xhr.status + ")."); return; }
      if (body.progress) updateProgress(body.progress);
      if (body.status === "accepted" || body.status === "already_uploaded" || body.status === "rejected") {
        finish(job, body.status, body.status === "accepted" ? "" : body.message);
      } else {
        finish(job, "error", body.message || "Upload failed.");
      }
    };
    var data = new FormData();
    data.append("photo", job.file, job.file.name);
    xhr.send(data);
  }

  var shown = parseInt(document.getElementById("progress-count").textContent, 10) || 0;

  function updateProgress(p) {
    // Answers to parallel uploads can arrive out of order: an older count must not win.
    if (p.accepted < shown) return;
    shown = p.accepted;
    document.getElementById("progress-count").textContent = p.accepted;
    document.getElementById("progress-bar").value = Math.min(p.accepted, quota);
    var left = Math.max(p.quota - p.accepted, 0);
    document.getElementById("progress-text").textContent = p.complete
      ? "Fee paid: you have " + p.accepted + " accepted photos. See you at the meetup!"
      : left + " more accepted photo" + (left === 1 ? "" : "s") + " to go.";
  }
})();
