// hf-rlhf label: ranking by drag and drop or keyboard, ties, flags, shortcuts. No dependencies, no inline code
// (the pages' Content-Security-Policy allows scripts from /static only). The form's hidden `order` (original
// indices, top first) and `tied` (for each position after the first: 1 if tied with the one above) are what the
// server reads; they are kept up to date after every change.
"use strict";

(function () {
  const form = document.getElementById("task-form");
  const list = document.getElementById("ranking-list");
  const help = document.getElementById("shortcuts");
  const guidelines = document.getElementById("guidelines");
  let selected = null;

  function cards() {
    return list ? Array.from(list.querySelectorAll("li.completion")) : [];
  }

  function sync() {
    if (!list) return;
    const items = cards();
    let rank = 1;
    items.forEach(function (li, position) {
      if (position === 0) li.dataset.tied = "0";
      if (position > 0 && li.dataset.tied !== "1") rank = position + 1;
      li.dataset.position = String(position + 1);
      li.dataset.rank = String(rank);
      li.querySelector("[data-rank]").textContent = String(rank);
      li.classList.toggle("tied", li.dataset.tied === "1");
      li.querySelector(".tie-toggle").setAttribute("aria-pressed", li.dataset.tied === "1" ? "true" : "false");
    });
    document.getElementById("order").value = items.map(function (li) { return li.dataset.index; }).join(",");
    document.getElementById("tied").value = items.slice(1).map(function (li) {
      return li.dataset.tied === "1" ? "1" : "0";
    }).join(",");
  }

  function select(li) {
    if (!li) return;
    cards().forEach(function (c) { c.classList.remove("selected"); });
    selected = li;
    li.classList.add("selected");
    li.focus();
  }

  function move(li, delta) {
    const items = cards();
    const position = items.indexOf(li);
    const target = position + delta;
    if (position < 0 || target < 0 || target >= items.length) return;
    const below = items[position + 1];
    if (below) below.dataset.tied = "0"; // it was tied with the card that leaves
    li.dataset.tied = "0";
    if (delta < 0) list.insertBefore(li, items[target]);
    else list.insertBefore(li, items[target].nextSibling);
    sync();
    select(li);
  }

  function toggleTie(li) {
    if (!li || cards().indexOf(li) === 0) return;
    li.dataset.tied = li.dataset.tied === "1" ? "0" : "1";
    sync();
  }

  function toggleFlag(li, flag) {
    if (!li) return;
    const box = li.querySelector('input[data-flag="' + flag + '"]');
    if (box) box.checked = !box.checked;
  }

  // ---------------------------------------------------------------------------- drag and drop (mouse)
  let dragged = null;
  function dropZone(li, event) {
    const box = li.getBoundingClientRect();
    const y = (event.clientY - box.top) / box.height;
    return y < 0.3 ? "before" : y > 0.7 ? "after" : "tie";
  }
  if (list) {
    list.addEventListener("dragstart", function (event) {
      dragged = event.target.closest("li.completion");
      if (!dragged) return;
      dragged.classList.add("dragging");
      event.dataTransfer.effectAllowed = "move";
      event.dataTransfer.setData("text/plain", dragged.dataset.index);
    });
    list.addEventListener("dragend", function () {
      if (dragged) dragged.classList.remove("dragging");
      cards().forEach(function (c) { c.classList.remove("drop-before", "drop-after", "drop-tie"); });
      dragged = null;
    });
    list.addEventListener("dragover", function (event) {
      const li = event.target.closest("li.completion");
      if (!dragged || !li || li === dragged) return;
      event.preventDefault();
      cards().forEach(function (c) { c.classList.remove("drop-before", "drop-after", "drop-tie"); });
      li.classList.add("drop-" + dropZone(li, event));
    });
    list.addEventListener("drop", function (event) {
      const li = event.target.closest("li.completion");
      if (!dragged || !li || li === dragged) return;
      event.preventDefault();
      const zone = dropZone(li, event);
      const items = cards();
      const below = items[items.indexOf(dragged) + 1];
      if (below) below.dataset.tied = "0";
      if (zone === "before") {
        list.insertBefore(dragged, li);
        dragged.dataset.tied = "0";
      } else {
        list.insertBefore(dragged, li.nextSibling);
        dragged.dataset.tied = zone === "tie" ? "1" : "0"; // dropped on its middle: tied with it
      }
      sync();
      select(dragged);
    });
    list.addEventListener("click", function (event) {
      const li = event.target.closest("li.completion");
      if (!li) return;
      const action = event.target.closest("[data-action]");
      if (action && action.dataset.action === "tie") toggleTie(li);
      if (action && action.dataset.action === "up") move(li, -1);
      if (action && action.dataset.action === "down") move(li, 1);
      if (!event.target.closest("input, label")) select(li);
    });
    sync();
  }

  // ------------------------------------------------------------------------------------------ keyboard
  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
  }
  function click(id) {
    const element = document.getElementById(id);
    if (element) element.click();
  }
  let submitted = false;
  if (form) {
    form.addEventListener("submit", function (event) {
      sync();
      if (submitted) { event.preventDefault(); return; } // a double click sends one form (the server checks too)
      submitted = true;
    });
  }
  const demonstration = document.getElementById("demonstration");
  const counter = document.getElementById("demonstration-count");
  if (demonstration && counter) {
    demonstration.addEventListener("input", function () { counter.textContent = String(demonstration.value.length); });
  }
  const helpButton = document.getElementById("help-button");
  if (helpButton && help) helpButton.addEventListener("click", function () { help.showModal(); });

  document.addEventListener("keydown", function (event) {
    const key = event.key;
    if ((event.ctrlKey || event.metaKey) && key === "Enter" && form) {
      event.preventDefault();
      click("submit");
      return;
    }
    if (key === "Escape") {
      if (typing(document.activeElement)) document.activeElement.blur();
      return;
    }
    if (typing(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (key === "?") { if (help.open) help.close(); else help.showModal(); event.preventDefault(); return; }
    if (key === "g" && guidelines) { guidelines.classList.toggle("hidden"); return; }
    if (document.body.dataset.page === "home" && key === "Enter") { click("start"); return; }
    if (!form) return;
    if (key === "s") { event.preventDefault(); click("skip"); return; }
    if (key === "c") { event.preventDefault(); document.getElementById("comment").focus(); return; }
    if (key === "e" && demonstration) { event.preventDefault(); demonstration.focus(); return; }
    if (!list) return;
    const items = cards();
    const position = selected ? items.indexOf(selected) : -1;
    if (key === "Enter" && !event.target.closest("button")) { event.preventDefault(); click("submit"); return; }
    if ((key === "ArrowUp" && event.shiftKey) || key === "K") { event.preventDefault(); move(selected, -1); return; }
    if ((key === "ArrowDown" && event.shiftKey) || key === "J") { event.preventDefault(); move(selected, 1); return; }
    if (key === "ArrowDown" || key === "j") { event.preventDefault(); select(items[Math.min(position + 1, items.length - 1)]); return; }
    if (key === "ArrowUp" || key === "k") { event.preventDefault(); select(items[Math.max(position - 1, 0)]); return; }
    if (/^[1-9]$/.test(key) && items[Number(key) - 1]) { event.preventDefault(); select(items[Number(key) - 1]); return; }
    if (key === "t" || key === "=") { event.preventDefault(); toggleTie(selected); return; }
    if (key === "x") { toggleFlag(selected, "unsafe"); return; }
    if (key === "w") { toggleFlag(selected, "wrong"); return; }
    if (key === "i") { toggleFlag(selected, "instructions"); return; }
    if (key === "a") { click("all-unacceptable"); return; }
  });
})();
