// Upload page. Each photo is hashed (in a worker), the server is asked whether it already has
// those bytes, and only if not sent with tus (resumable: a dropped connection or a reload goes on
// from the last byte the server has). The queue lives in IndexedDB, so it survives a reload, a
// crash or a phone that killed the tab, and resumes by itself. Offline, it waits and retries
// forever (backoff capped at 30 s) while the page is open. Without JavaScript the form posts.
(function () {
  "use strict";
  var script = document.currentScript;
  var cfg = script.dataset;
  var quota = parseInt(cfg.quota, 10);
  var userId = cfg.user;
  var CHUNK = parseInt(cfg.chunk, 10) || 1024 * 1024;
  var PARALLEL = 3;
  var KEEP_ACCEPTED = 3;  // the most recent accepted photos stay in view; older ones fold away
  var csrf = document.querySelector('meta[name="csrf-token"]').content;

  var form = document.getElementById("upload-form");
  var inputs = [document.getElementById("photo-input"), document.getElementById("camera-input")];
  var dropzone = document.getElementById("dropzone");
  var queueList = document.getElementById("queue");
  var doneBox = document.getElementById("done-box");
  var doneList = document.getElementById("done-list");
  var doneCount = document.getElementById("done-count");
  var summary = document.getElementById("summary");
  var banner = document.getElementById("network");
  var announcer = document.getElementById("announce");
  var retryButton = document.getElementById("retry-failed");
  var clearButton = document.getElementById("clear-done");
  document.getElementById("upload-submit").hidden = true;  // files go as soon as they are chosen
  document.getElementById("queue-tools").hidden = false;
  form.addEventListener("submit", function (e) { e.preventDefault(); });

  var items = [];          // in the order they were added
  var running = 0;
  var failures = 0;        // network failures in a row, for the backoff
  var retryTimer = null;
  var wakeLock = null;

  // -- IndexedDB ------------------------------------------------------------------------------
  var dbPromise = new Promise(function (resolve, reject) {
    if (!window.indexedDB) { resolve(null); return; }
    var req = indexedDB.open("plate-collector-uploads", 1);
    req.onupgradeneeded = function () { req.result.createObjectStore("items", { keyPath: "id", autoIncrement: true }); };
    req.onsuccess = function () { resolve(req.result); };
    req.onerror = function () { resolve(null); };  // private mode etc.: the queue lives in memory
  });

  function tx(mode, fn) {
    return dbPromise.then(function (db) {
      if (!db) return null;
      return new Promise(function (resolve, reject) {
        var t = db.transaction("items", mode);
        var result = fn(t.objectStore("items"));
        t.oncomplete = function () { resolve(result && result.result); };
        t.onerror = t.onabort = function () { reject(t.error); };
      });
    });
  }

  function record(item) {
    var r = { user: userId, file: item.file, name: item.name, size: item.size, type: item.type, sha256: item.sha256,
              state: item.state, uploadUrl: item.uploadUrl, verdict: item.verdict, thumb: item.thumb, added: item.added };
    if (item.id != null) r.id = item.id;
    return r;
  }

  function save(item) {
    return tx("readwrite", function (store) { return store.put(record(item)); }).then(function (id) {
      if (item.id == null && id != null) item.id = id;
    }).catch(function () { /* quota or private mode: keep going in memory */ });
  }

  function forget(item) {
    if (item.id == null) return Promise.resolve();
    return tx("readwrite", function (store) { return store.delete(item.id); }).catch(function () {});
  }

  // -- adding photos --------------------------------------------------------------------------
  inputs.forEach(function (input) {
    input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
  });
  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (e) { e.preventDefault(); dropzone.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    dropzone.addEventListener(type, function (e) { e.preventDefault(); dropzone.classList.remove("over"); });
  });
  dropzone.addEventListener("drop", function (e) { addFiles(e.dataTransfer.files); });

  function addFiles(files) {
    var added = Array.prototype.map.call(files, function (file) {
      var item = { id: null, file: file, name: file.name, size: file.size, type: file.type, sha256: null,
                   state: "waiting", uploadUrl: null, verdict: null, thumb: null, added: Date.now() };
      items.push(item);
      render(item);
      return item;
    });
    updateSummary();
    // Saved before anything is sent, so a reload from here on finds them.
    Promise.all(added.map(save)).then(function () {
      pump();
      thumbnails(added);
    });
  }

  // -- thumbnails: decoded in the browser, small; a placeholder where it cannot decode (HEIC) --
  function thumbnails(list) {
    list.reduce(function (chain, item) {
      return chain.then(function () { return makeThumb(item); });
    }, Promise.resolve());
  }

  function makeThumb(item) {
    if (item.thumb || !item.file || !window.createImageBitmap) return Promise.resolve();
    return createImageBitmap(item.file, { resizeHeight: 96, resizeQuality: "low" }).then(function (bitmap) {
      var canvas = document.createElement("canvas");
      var side = 96;
      canvas.width = side; canvas.height = side;
      var scale = Math.max(side / bitmap.width, side / bitmap.height);
      var w = bitmap.width * scale, h = bitmap.height * scale;
      canvas.getContext("2d").drawImage(bitmap, (side - w) / 2, (side - h) / 2, w, h);
      bitmap.close();
      return new Promise(function (resolve) { canvas.toBlob(resolve, "image/jpeg", 0.7); });
    }).then(function (blob) {
      if (!blob) return;
      item.thumb = blob;
      drawThumb(item);
      return save(item);
    }).catch(function () { /* cannot decode here (HEIC on most browsers): the placeholder stays */ });
  }

  function drawThumb(item) {
    if (!item.thumb || !item.el) return;
    createImageBitmap(item.thumb).then(function (bitmap) {
      var canvas = document.createElement("canvas");
      canvas.className = "thumb";
      canvas.width = bitmap.width; canvas.height = bitmap.height;
      canvas.setAttribute("aria-hidden", "true");
      canvas.getContext("2d").drawImage(bitmap, 0, 0);
      bitmap.close();
      item.el.thumb.replaceWith(canvas);
      item.el.thumb = canvas;
    }).catch(function () {});
  }

  // -- the list -------------------------------------------------------------------------------
  var LABELS = {
    waiting: "Waiting", hashing: "Checking the photo…", asking: "Checking the photo…", uploading: "Uploading",
    checking: "Sent; checking…", failed: "Not sent"
  };

  function verdictLabel(v) {
    if (v.status === "accepted") return "Accepted";
    if (v.status === "already_uploaded") return "Accepted";
    return "Refused";
  }

  function verdictClass(v) {
    return v.status === "rejected" ? "rejected" : "accepted";
  }

  function render(item) {
    if (!item.el) {
      var li = document.createElement("li");
      var thumb = document.createElement("span");
      thumb.className = "thumb placeholder";
      thumb.setAttribute("aria-hidden", "true");
      thumb.textContent = (item.name.split(".").pop() || "").slice(0, 4).toUpperCase();
      var name = document.createElement("span");
      name.className = "name";
      name.textContent = item.name;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = 0;
      bar.setAttribute("aria-label", "Upload of " + item.name);
      var verdict = document.createElement("span");
      verdict.className = "verdict";
      li.append(thumb, name, bar, verdict);
      item.el = { li: li, thumb: thumb, bar: bar, verdict: verdict };
      queueList.append(li);
      drawThumb(item);
    }
    var el = item.el;
    el.verdict.textContent = "";
    if (item.state === "done") {
      var v = item.verdict;
      el.li.className = "item job verdict-" + verdictClass(v) + (v.status === "already_uploaded" ? " already" : "");
      el.bar.hidden = true;
      var strong = document.createElement("strong");
      strong.textContent = verdictLabel(v);
      el.verdict.append(strong);
      if (v.status === "already_uploaded") el.verdict.append(" — already counted");
      else if (v.status === "rejected") el.verdict.append(" — " + v.message);
    } else {
      el.li.className = "item job verdict-pending state-" + item.state;
      el.bar.hidden = item.state === "failed";
      if (item.state === "uploading" && item.size) {
        el.bar.value = Math.round(((item.sent || 0) / item.size) * 100);
        el.verdict.textContent = "Uploading " + el.bar.value + "%";
      } else if (item.state === "failed") {
        el.li.className = "item job verdict-error";
        var s = document.createElement("strong");
        s.textContent = LABELS.failed;
        el.verdict.append(s, " — " + (item.error || "Press “Retry failed” to try again."));
      } else if (item.state === "waiting" && item.retryAt) {
        el.verdict.textContent = navigator.onLine === false ? "Waiting for the network" : "Will try again shortly";
      } else {
        el.verdict.textContent = LABELS[item.state] || item.state;
      }
    }
  }

  function layout() {
    // Active, failed and refused photos stay in view; accepted ones fold away but the last few.
    var accepted = items.filter(function (it) { return it.state === "done" && it.verdict.status !== "rejected"; });
    var fold = accepted.slice(0, Math.max(accepted.length - KEEP_ACCEPTED, 0));
    fold.forEach(function (it) { if (it.el.li.parentNode !== doneList) doneList.append(it.el.li); });
    doneBox.hidden = fold.length === 0;
    doneCount.textContent = String(fold.length);
    updateSummary();
  }

  function updateSummary() {
    var n = { accepted: 0, refused: 0, waiting: 0, failed: 0 };
    items.forEach(function (it) {
      if (it.state === "done") n[it.verdict.status === "rejected" ? "refused" : "accepted"] += 1;
      else if (it.state === "failed") n.failed += 1;
      else n.waiting += 1;
    });
    var parts = [n.accepted + " accepted", n.refused + " refused", n.waiting + " waiting"];
    if (n.failed) parts.push(n.failed + " not sent");
    summary.textContent = items.length ? parts.join(", ") : "";
    summary.hidden = !items.length;
    retryButton.hidden = n.failed === 0;
    clearButton.hidden = n.accepted + n.refused === 0;
    summary.dataset.waiting = String(n.waiting);
    keepAwake(n.waiting > 0);
  }

  function announce(text) {
    announcer.textContent = text;
  }

  // -- the work -------------------------------------------------------------------------------
  function pump() {
    if (navigator.onLine === false) { showOffline(); return; }
    var now = Date.now();
    var next = null;
    for (var i = 0; i < items.length && running < PARALLEL; i++) {
      var it = items[i];
      if (it.state !== "waiting" || it.busy) continue;
      if (it.retryAt && it.retryAt > now) { next = Math.min(next || it.retryAt, it.retryAt); continue; }
      running += 1;
      it.busy = true;
      work(it);
    }
    if (next && !retryTimer) {
      retryTimer = setTimeout(function () { retryTimer = null; pump(); }, Math.max(next - Date.now(), 50));
    }
  }

  function setState(item, state) {
    item.state = state;
    render(item);
    updateSummary();
  }

  function work(item) {
    setState(item, "hashing");
    (item.sha256 ? Promise.resolve(item.sha256) : hash(item.file)).then(function (sha) {
      item.sha256 = sha;
      save(item);
      setState(item, "asking");
      return ask(sha);
    }).then(function (known) {
      if (known) return known;
      setState(item, "uploading");
      return send(item);
    }).then(function (verdict) {
      failures = 0;
      hideBanner();
      done(item, verdict);
    }, function (err) {
      problem(item, err);
    }).then(function () {
      item.busy = false;
      running -= 1;
      pump();
    });
  }

  function done(item, v) {
    item.state = "done";
    item.verdict = { status: v.status, code: v.code, message: v.message };
    item.retryAt = null;
    item.file = null;  // the bytes are no longer needed; the verdict is kept
    save(item);
    render(item);
    if (v.progress) updateProgress(v.progress);
    var said = item.name + ": " + verdictLabel(item.verdict);
    if (v.status === "already_uploaded") said += ", already counted";
    if (v.status === "rejected") said += ". " + v.message;
    if (v.status === "accepted" && v.progress) said += ". " + v.progress.accepted + " of " + v.progress.quota + " for the fee";
    announce(said);
    layout();
  }

  function Problem(kind, message, verdict) {
    this.kind = kind;  // network (wait and retry) | final (a verdict) | fatal (needs the person)
    this.message = message;
    this.verdict = verdict;
  }

  function problem(item, err) {
    if (!(err instanceof Problem)) err = new Problem("network", String(err && err.message || err));
    if (err.kind === "final") { done(item, err.verdict); return; }
    if (err.kind === "fatal") {
      item.error = err.message;
      item.state = "failed";
      save(item);
      render(item);
      updateSummary();
      announce(item.name + ": not sent. " + err.message);
      return;
    }
    // Network trouble or a busy server: wait, then go on from where the server is. No limit.
    failures += 1;
    var delay = Math.min(30000, 1000 * Math.pow(2, Math.min(failures, 5))) * (0.75 + Math.random() / 2);
    item.retryAt = Date.now() + delay;
    item.state = "waiting";
    if (err.expired) item.uploadUrl = null;
    save(item);
    render(item);
    updateSummary();
    if (navigator.onLine === false) showOffline();
    else showBanner("The connection dropped. Your photos are kept; trying again by itself…");
  }

  // -- hashing in a worker --------------------------------------------------------------------
  var worker = null;
  var hashes = {};
  var hashSeq = 0;

  function hash(file) {
    if (!worker) {
      worker = new Worker(cfg.worker);
      worker.onmessage = function (e) {
        var cb = hashes[e.data.id];
        delete hashes[e.data.id];
        if (cb) cb(e.data);
      };
    }
    return new Promise(function (resolve, reject) {
      var id = ++hashSeq;
      hashes[id] = function (msg) {
        if (msg.error) reject(new Problem("fatal", "This file cannot be read: pick it again."));
        else resolve(msg.sha256);
      };
      worker.postMessage({ id: id, file: file });
    });
  }

  // -- talking to the server ------------------------------------------------------------------
  function parse(text) {
    try { return JSON.parse(text); } catch (e) { return null; }
  }

  function classify(status, body) {
    // What an HTTP answer means for this photo.
    if (body && (body.status === "rejected" || body.status === "accepted" || body.status === "already_uploaded")) {
      return new Problem("final", body.message, body);
    }
    if (status === 0 || status >= 500 || status === 429 || status === 409 || status === 423 || status === 408) {
      return new Problem("network", "HTTP " + status);
    }
    if (status === 404 || status === 410 || (body && body.code === "too_many_parts")) {
      var p = new Problem("network", "The server forgot this upload; starting it again.");
      p.expired = true;
      return p;
    }
    if (status === 401) return new Problem("fatal", "You are logged out. Log in again, then press “Retry failed”.");
    if (body && body.code === "csrf_failed") return new Problem("fatal", "Reload the page, then press “Retry failed”.");
    return new Problem("fatal", (body && body.message) || ("Unexpected answer from the server (HTTP " + status + ")."));
  }

  function request(method, url) {
    return fetch(url, { method: method, credentials: "same-origin", headers: { "Accept": "application/json", "X-CSRFToken": csrf } })
      .catch(function () { throw new Problem("network", "offline"); })
      .then(function (r) {
        return r.text().then(function (t) { return { status: r.status, body: parse(t) }; },
                             function () { throw new Problem("network", "cut off"); });
      });
  }

  function ask(sha) {
    return request("GET", cfg.known.replace("SHA256", sha)).then(function (r) {
      if (r.status === 404 && r.body && r.body.code === "unknown") return null;
      if (r.status === 200 && r.body && r.body.status) return r.body;
      throw classify(r.status, r.body);
    });
  }

  function verdictOf(url) {
    // The verdict of a complete upload, when the reply to its last PATCH was lost.
    return request("GET", url).then(function (r) {
      if (r.status === 202) {
        return new Promise(function (resolve) { setTimeout(resolve, 2000); }).then(function () { return verdictOf(url); });
      }
      if (r.status === 200 && r.body && r.body.status) return r.body;
      throw classify(r.status, r.body);
    });
  }

  function send(item) {
    return new Promise(function (resolve, reject) {
      var finalBody = null;
      var upload = new tus.Upload(item.file, {
        endpoint: cfg.tus,
        uploadUrl: item.uploadUrl || null,
        chunkSize: CHUNK,
        retryDelays: null,  // the page retries, without limit, in problem()
        storeFingerprintForResuming: false,  // the upload URL is kept with the item in IndexedDB
        metadata: { filename: item.name, filetype: item.type || "application/octet-stream", sha256: item.sha256 || "" },
        headers: { "X-CSRFToken": csrf },
        onUploadUrlAvailable: function () {
          if (item.uploadUrl !== upload.url) { item.uploadUrl = upload.url; save(item); }
        },
        onProgress: function (sent) {
          item.sent = sent;
          if (item.state === "uploading") render(item);
        },
        onAfterResponse: function (req, res) {
          if (req.getMethod() === "PATCH" && res.getStatus() === 200) finalBody = parse(res.getBody());
        },
        onSuccess: function () {
          setState(item, "checking");
          if (finalBody && finalBody.status) resolve(finalBody);
          else verdictOf(upload.url).then(resolve, reject);
        },
        onError: function (err) {
          var res = err && err.originalResponse;
          reject(res ? classify(res.getStatus(), parse(res.getBody())) : new Problem("network", String(err)));
        }
      });
      item.upload = upload;
      upload.start();
    });
  }

  // -- network, retry, leaving, staying awake -------------------------------------------------
  function showBanner(text) { banner.textContent = text; banner.hidden = false; }
  function hideBanner() { banner.hidden = true; }
  function showOffline() { showBanner("You are offline; waiting. Your photos are kept and will be sent when the network is back."); }

  window.addEventListener("offline", function () {
    showOffline();
    items.forEach(function (it) { if (it.state === "waiting") render(it); });
  });
  window.addEventListener("online", function () {
    failures = 0;
    hideBanner();
    items.forEach(function (it) { it.retryAt = null; });
    pump();
  });

  retryButton.addEventListener("click", function () {
    items.forEach(function (it) {
      if (it.state === "failed") { it.state = "waiting"; it.error = null; it.retryAt = null; save(it); render(it); }
    });
    failures = 0;
    updateSummary();
    pump();
  });

  clearButton.addEventListener("click", function () {
    items = items.filter(function (it) {
      if (it.state !== "done") return true;
      it.el.li.remove();
      forget(it);
      return false;
    });
    layout();
  });

  window.addEventListener("beforeunload", function (e) {
    var busy = items.some(function (it) { return it.state !== "done" && it.state !== "failed"; });
    if (busy) { e.preventDefault(); e.returnValue = ""; }
  });

  function keepAwake(wanted) {
    if (!("wakeLock" in navigator)) return;
    if (wanted && !wakeLock && document.visibilityState === "visible") {
      wakeLock = true;  // a request in flight
      navigator.wakeLock.request("screen").then(function (lock) {
        wakeLock = lock;
        lock.addEventListener("release", function () { if (wakeLock === lock) wakeLock = null; });
      }, function () { wakeLock = null; });
    } else if (!wanted && wakeLock && wakeLock !== true) {
      wakeLock.release();
      wakeLock = null;
    }
  }
  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "visible") updateSummary(); });

  // -- the fee counter ------------------------------------------------------------------------
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

  // -- back from a reload, a crash or another day: the queue resumes by itself ----------------
  tx("readonly", function (store) { return store.getAll(); }).then(function (records) {
    (records || []).filter(function (r) { return r.user === userId; }).forEach(function (r) {
      var item = r;
      if (item.state !== "done" && item.state !== "failed") item.state = "waiting";
      if (item.state !== "done" && !item.file) { item.state = "failed"; item.error = "The file is no longer available: pick it again."; }
      items.push(item);
      render(item);
    });
    items.sort(function (a, b) { return a.added - b.added || a.id - b.id; });
    items.forEach(function (it) { queueList.append(it.el.li); });
    layout();
    document.body.dataset.queueReady = "1";
    pump();
    thumbnails(items.filter(function (it) { return it.state !== "done"; }));
  }).catch(function () { document.body.dataset.queueReady = "1"; });
})();
